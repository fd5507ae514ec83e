"""Where a BabyLM task's data files are: plain files, folders of them, or members of a zip read in place
(`ARCHIVE.zip` or `ARCHIVE.zip:FOLDER`), as the entity-tracking and EWoK authors ship theirs, encrypted
with a password (`--zip-password`) so the items stay out of training crawls: nothing is unpacked to disk.
A missing file is named in one line with where the official copy is."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

OSF = "the official pipeline's evaluation_data (OSF https://osf.io/ryjfm/, see github.com/babylm/evaluation-pipeline-2025)"
# Where each task's official data comes from, for the one-line message about a missing file.
DOWNLOADS = {
    "blimp": f"full_eval/blimp_filtered or fast_eval/blimp_fast in {OSF}",
    "supplement": f"full_eval/supplement_filtered or fast_eval/supplement_fast in {OSF}",
    "ewok": (f"fast_eval/ewok_fast.zip in {OSF}; the full set is built from the gated Hugging Face dataset "
             "ewok-core/ewok-core-1.0 by the pipeline's `python -m evaluation_pipeline.ewok.dl_and_filter`"),
    "entity_tracking": f"full_eval/entity_tracking and fast_eval/entity_tracking_fast in {OSF}",
    "comps": f"full_eval/comps/comps_{{base,wugs,wugs_dist-before,wugs_dist-in-between}}.jsonl in {OSF}",
    "wug_adj": f"full_eval/wug_adj_nominalization in {OSF}",
    "wug_past": f"full_eval/wug_past_tense in {OSF}",
    "reading": f"full_eval/reading/reading_data.csv in {OSF}",
}


@dataclass(frozen=True)
class DataFile:
    """One data file, on disk or inside a zip."""
    path: Path                 # the file, or the zip holding it
    member: str = ""           # the name inside the zip ("" for a plain file)
    password: str = ""

    @property
    def name(self) -> str:     # what messages call it
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @property
    def stem(self) -> str:
        return Path(self.member).stem if self.member else self.path.stem

    def read_text(self) -> str:
        data = self._read(-1) if self.member else self.path.read_bytes()
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{self.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    def check(self) -> None:
        """Raise the error reading would raise for a zip without its password (reads one byte)."""
        if self.member:
            self._read(1)

    def _read(self, size: int) -> bytes:
        with zipfile.ZipFile(self.path) as z:
            encrypted = z.getinfo(self.member).flag_bits & 0x1
            if encrypted and not self.password:
                raise ValueError(f"{self.name}: the zip is encrypted: pass --zip-password (the official pipeline's "
                                 "README gives it)")
            try:
                with z.open(self.member, pwd=self.password.encode() if encrypted else None) as f:
                    return f.read(size)
            except RuntimeError as e:  # zipfile's "Bad password for file ..."
                raise ValueError(f"{self.name}: {e} (check --zip-password)") from None


def missing(path, task: str) -> FileNotFoundError:
    where = DOWNLOADS.get(task, OSF)
    return FileNotFoundError(f"{path} not found: the {task} data is {where}")


def _zip_members(path: Path, folder: str, suffix: str, password: str) -> list[DataFile]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(suffix) and not n.endswith("/")]
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a readable zip ({e})") from None
    if folder:
        names = [n for n in names if n.rpartition("/")[0] == folder.strip("/")]
    folders = sorted({n.rpartition("/")[0] for n in names})
    if not names:
        raise ValueError(f"{path}{':' + folder if folder else ''}: no {suffix} files in this zip")
    if len(folders) > 1:
        raise ValueError(f"{path}: {suffix} files in {len(folders)} folders ({', '.join(folders)}): name one, "
                         f"e.g. --data {path}:{folders[0]}")
    return [DataFile(path, n, password) for n in sorted(names)]


def data_files(paths, task: str, suffix: str = ".jsonl", password: str = "") -> list[DataFile]:
    """The `suffix` files named by `paths`: files, folders (their `suffix` files, not recursive, as the
    pipeline reads a folder) and zips (`X.zip` or `X.zip:FOLDER`)."""
    if not paths:
        raise ValueError(f"--data is required for the {task} task: a file, a folder or a zip ({DOWNLOADS.get(task, OSF)})")
    files = []
    for spec in map(str, paths):
        archive, sep, folder = spec.partition(".zip:")
        path = Path(archive + ".zip") if sep else Path(spec)
        if not path.exists():
            raise missing(path, task)
        if path.suffix == ".zip":
            files += _zip_members(path, folder, suffix, password)
        elif path.is_dir():
            found = sorted(path.glob(f"*{suffix}"))
            if not found:
                raise missing(path / f"*{suffix}", task)
            files += [DataFile(f) for f in found]
        else:
            files.append(DataFile(path))
    return files
