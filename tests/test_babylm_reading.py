"""The reading task against independent references: surprisals from transformers' Llama following the
pipeline's steps word by word (SCORING.md), the regressions from statsmodels' formulas as the pipeline writes
them, Spearman's ρ from scipy; on the real reading_data.csv (a slice) and on synthetic data with gaps."""
import math

import numpy as np
import pytest
import torch

from minitoddler.checkpoint import load_model, save_model
from minitoddler.config import ModelConfig
from minitoddler.evals.reading import evaluate_reading, normalised_delta_r2, read_reading_csv, surprisals
from minitoddler.evals.sources import DataFile
from minitoddler.evals.stats import ols_r2, ranks, spearman
from minitoddler.model import ToddlerLM
from minitoddler.tokenizer import load_tokenizer, train_tokenizer

ROWS = slice(300, 390)  # holds an empty context (row 320) and missing word frequencies
EYE = "RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound"
BASE = "Subtlex_log10 + length + context_length + Subtlex_log10:length + Subtlex_log10:context_length + length:context_length"
SPILL = ("Subtlex_log10 + length + context_length + prev_length + prev_pred + Subtlex_log10:length + "
         "Subtlex_log10:context_length + Subtlex_log10:prev_length + Subtlex_log10:prev_pred + length:context_length + "
         "length:prev_length + length:prev_pred + context_length:prev_length + context_length:prev_pred + prev_length:prev_pred")


@pytest.fixture(scope="module")
def csv_path(shared_data):
    return shared_data / "babylm" / "fast_eval" / "reading" / "reading_data.csv"


@pytest.fixture(scope="module")
def model_dir(csv_path, tmp_path_factory):
    import csv
    sentences = sorted({r["sentence"] for r in csv.DictReader(csv_path.open())})
    tok_dir = tmp_path_factory.mktemp("tok")
    train_tokenizer(sentences[::3], tok_dir, vocab_size=300)  # small: many words take several tokens
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=load_tokenizer(tok_dir).get_vocab_size(), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, initializer_range=0.2, bos_token_id=0, eos_token_id=0)
    out = tmp_path_factory.mktemp("model")
    save_model(ToddlerLM(cfg), out, tokenizer=tok_dir)
    return out


def pipeline_surprisal(hf, tok, sentence, word):
    """-ln p(word | sentence) by the pipeline's steps, written out with transformers one query at a time."""
    def p_next(context, piece):
        with torch.no_grad():
            logits = hf(**tok(context, return_tensors="pt")).logits[0, -1]
        return torch.softmax(logits, -1)[tok(piece, add_special_tokens=False)["input_ids"][0]].item()
    target = tok(word, add_special_tokens=False)["input_ids"]
    probs = [p_next(sentence, word)]
    sentence += tok.decode(target[0])
    for token in target[1:]:
        piece = tok.decode(token)
        probs.append(p_next(sentence, piece))
        sentence += piece
    return -math.log(np.prod(probs)), len(target)


@pytest.fixture(scope="module")
def frame(csv_path, model_dir):
    """The CSV slice as the pipeline reads it (pandas, `item` as text, empty items "None") with its surprisals."""
    import pandas as pd
    from transformers import AutoTokenizer, LlamaForCausalLM
    hf = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    df = pd.read_csv(csv_path, dtype={"item": str}).iloc[ROWS].copy()
    df["item"] = df["item"].fillna("None")
    pred = [pipeline_surprisal(hf, tok, r["item"], r["word"]) for _, r in df.iterrows()]
    df["pred"] = [p for p, _ in pred]
    df["n_tokens"] = [n for _, n in pred]
    df["prev_pred"] = [pipeline_surprisal(hf, tok, r["prev_item"], r["prev_word"])[0]
                       if isinstance(r["prev_item"], str) else float("nan") for _, r in df.iterrows()]
    return df


def test_surprisals_match_the_pipeline_steps(csv_path, model_dir, frame):
    rows = read_reading_csv(DataFile(csv_path))[ROWS]
    assert len(read_reading_csv(DataFile(csv_path))) == 1726
    assert (frame["n_tokens"] > 1).sum() > 20                 # words of several tokens are in the slice
    assert any(r["item"] == "None" for r in rows)             # and the sentence-initial word's empty context
    tok, model = load_tokenizer(model_dir), load_model(model_dir)
    ours = surprisals(model, tok, [(r["item"], r["word"], r["where"]) for r in rows])
    assert ours == pytest.approx(frame["pred"].tolist(), rel=1e-4, abs=1e-4)


def test_reading_scores_match_statsmodels(csv_path, model_dir, frame):
    import statsmodels.formula.api as smf
    result, dump = evaluate_reading(load_model(model_dir), load_tokenizer(model_dir),
                                    read_reading_csv(DataFile(csv_path))[ROWS])
    assert [d["pred"] for d in dump] == pytest.approx(frame["pred"].tolist(), rel=1e-4)
    assert np.allclose([d["prev_pred"] for d in dump], frame["prev_pred"], rtol=1e-4, equal_nan=True)

    def normalised(dv, base, extra):
        r2b = smf.ols(f"{dv} ~ {base}", data=frame[[dv] + extra].dropna()).fit().rsquared
        r2f = smf.ols(f"{dv} ~ {base} + pred", data=frame[["pred", dv] + extra].dropna()).fit().rsquared
        return (r2f - r2b) / (1 - r2b) * 100
    base_cols = ["Subtlex_log10", "length", "context_length"]
    eye = [normalised(dv, BASE, base_cols) for dv in EYE]
    assert result["eye_tracking"] == pytest.approx(np.mean(eye), rel=1e-3, abs=1e-4)
    spr = normalised("self_paced_reading_time", SPILL, base_cols + ["prev_length", "prev_pred"])
    assert result["self_paced"] == pytest.approx(spr, rel=1e-3, abs=1e-4)
    spr_rows = frame[["pred", "self_paced_reading_time", *base_cols, "prev_length", "prev_pred"]].dropna()
    assert result["dvs"]["self_paced_reading_time"]["n_full"] == len(spr_rows) < 90  # rows with gaps left out


def test_delta_r2_by_statsmodels_with_gaps():
    """Synthetic rows with missing values in different columns, so baseline and full fits use different rows."""
    import pandas as pd
    import statsmodels.formula.api as smf
    rng = np.random.default_rng(0)
    n = 200
    df = pd.DataFrame({c: rng.normal(size=n) for c in ("Subtlex_log10", "length", "context_length", "prev_length",
                                                       "prev_pred", "pred")})
    df["y"] = df["length"] * 2 + df["pred"] * 0.5 + df["Subtlex_log10"] * df["length"] + rng.normal(size=n)
    df.loc[::7, "pred"] = np.nan
    df.loc[::11, "y"] = np.nan
    df.loc[::13, "prev_pred"] = np.nan
    rows = df.to_dict("records")
    for base, formula in ((("Subtlex_log10", "length", "context_length"), BASE),
                          (("Subtlex_log10", "length", "context_length", "prev_length", "prev_pred"), SPILL)):
        ours = normalised_delta_r2(rows, "y", base)
        r2b = smf.ols(f"y ~ {formula}", data=df[["y", *base]].dropna()).fit().rsquared
        r2f = smf.ols(f"y ~ {formula} + pred", data=df[["pred", "y", *base]].dropna()).fit().rsquared
        assert (ours["r2_baseline"], ours["r2_full"]) == pytest.approx((r2b, r2f), rel=1e-9)
        assert ours["delta_r2_pct"] == pytest.approx((r2f - r2b) / (1 - r2b) * 100, rel=1e-9)
        assert ours["n_full"] < ours["n_baseline"] < n
    x = rng.normal(size=(50, 3))
    y = x @ [1.0, -2.0, 0.5] + rng.normal(size=50)
    assert ols_r2(y, list(x.T)) == pytest.approx(smf.ols("y ~ a + b + c", data=pd.DataFrame(
        {"y": y, "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]})).fit().rsquared, rel=1e-12)


def test_spearman_with_ties_matches_scipy():
    from scipy.stats import rankdata, spearmanr
    a = [0.5, 0.5, 0.1, 0.9, 0.5, 0.2, 0.9]
    b = [1, 2, 3, 3, 5, 0, 1]
    assert ranks(a).tolist() == rankdata(a).tolist()
    assert spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)


def test_malformed_reading_csv(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("item,word\nA,b\n")
    with pytest.raises(ValueError, match=r"r.csv:1: not a reading CSV: no 'prev_item'"):
        read_reading_csv(DataFile(path))
    cols = "item,word,prev_item,prev_word,RTfirstfix,RTfirstpass,RTgopast,RTrightbound,self_paced_reading_time," \
           "Subtlex_log10,length,context_length,prev_length"
    path.write_text(cols + "\nHe,was,,,1,2,3,4,5,6,3,1,\nHe was,x,He,,1,2,3,4,5,6,1,2,3\n")
    with pytest.raises(ValueError, match=r"r.csv:3: 'prev_item' without a 'prev_word'"):
        read_reading_csv(DataFile(path))
    path.write_text(cols + "\nHe,was,,,1,2,fast,4,5,6,3,1,\n")
    with pytest.raises(ValueError, match=r"r.csv:2: could not convert string to float: 'fast'"):
        read_reading_csv(DataFile(path))
    path.write_text(cols + "\n")
    with pytest.raises(ValueError, match=r"r.csv: empty"):
        read_reading_csv(DataFile(path))
