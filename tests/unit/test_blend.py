"""Weight-space ensembles (``raydr best --mix`` / ``--soup``) on real tiny checkpoints: a mix at
α = 0 is the base model and at α = 1 the checkpoint, blends load in transformers and
sentence-transformers with nothing missing, choices follow the dev scores, bad input is one
line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ruined_copy, tiny_tree, write_checkpoint

from raydr import blend, config
from raydr.cli import main
from raydr.errors import RaydrError
from raydr.training import checkpoint
from raydr.validation.ledger import Ledger, done_row

TEXTS = ["cell protein gene", "star galaxy orbit comet", "bread cheese olive butter"]


@pytest.fixture
def run(tmp_path: Path, dev_dataset: Path, tiny_model_dir: Path) -> dict:
    """A run folder (validated on dev, scored on test) whose ledger validated two real tiny
    checkpoints (step 3 the best)."""
    tree = tiny_tree("mixed", tmp_path, dev_dataset, tiny_model_dir)
    cfg = config.build({**tree, "validation": {"split": "dev"}}, "t")
    ckpts = {s: write_checkpoint(tmp_path / "storage", tiny_model_dir, s, cfg) for s in (3, 5)}
    ledger = Ledger.for_run(cfg)
    for step, score in ((3, 0.9), (5, 0.8)):
        ledger.append(done_row("mixed", step, str(ckpts[step]), {"nDCG@10": score}))
    return {"cfg": cfg, "ckpts": ckpts, "dir": cfg.paths.run_dir, "base": tiny_model_dir}


def _embed(folder: Path, cfg) -> torch.Tensor:
    """(len(TEXTS), D) passage embeddings through raydr's own loader."""
    model, tokenizer = checkpoint.load(folder, cfg.model)
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.encode_passages(batch["input_ids"], batch["attention_mask"])


def test_a_mix_at_alpha_0_is_the_base_and_at_1_the_checkpoint(run, tmp_path: Path) -> None:
    cfg, ckpt = run["cfg"], run["ckpts"][3]
    base, tuned = _embed(run["base"], cfg), _embed(ckpt, cfg)
    assert not torch.allclose(base, tuned, atol=1e-3)  # the test can tell them apart
    out = {}
    for alpha in (0.0, 0.5, 1.0):
        record = blend.mix(ckpt, alpha, tmp_path / f"mix-{alpha}")
        assert record["alpha"] == alpha and record["base"] == str(run["base"])
        out[alpha] = _embed(tmp_path / f"mix-{alpha}", cfg)
    torch.testing.assert_close(out[0.0], base, rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1.0], tuned, rtol=0, atol=1e-6)
    assert not torch.allclose(out[0.5], base, atol=1e-3)
    assert not torch.allclose(out[0.5], tuned, atol=1e-3)
    # The weights themselves: halfway, tensor by tensor.
    from safetensors.torch import load_file

    mid, b, t = (
        load_file(p / "model.safetensors") for p in (tmp_path / "mix-0.5", run["base"], ckpt)
    )
    key = "encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(mid[key], 0.5 * b[key] + 0.5 * t[key])
    meta = json.loads((tmp_path / "mix-0.5" / "raydr.json").read_text())
    assert meta["blend"]["kind"] == "wise-ft" and meta["step"] == 3
    assert checkpoint.is_complete(tmp_path / "mix-0.5")  # its record lists what it holds
    assert not (tmp_path / "mix-0.5" / checkpoint.STATE).exists()  # a model, not a resume point


def test_a_blend_loads_in_transformers_and_sentence_transformers_with_nothing_missing(
    run, tmp_path: Path
) -> None:
    import transformers
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    out = tmp_path / "soup"
    blend.soup(list(run["ckpts"].values()), out, "uniform")
    _, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info  # nothing missing, unexpected or mismatched
    transformers.logging.set_verbosity_warning()
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("transformers").addHandler(handler)
    try:
        st = SentenceTransformer(str(out), device="cpu")
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    assert "MISSING" not in "\n".join(records)
    # sentence-transformers encodes as raydr does (mean pooling, normalised).
    ours = _embed(out, run["cfg"])
    theirs = torch.as_tensor(st.encode(TEXTS, convert_to_numpy=True))
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_mix_auto_and_a_greedy_soup_choose_what_the_dev_scores_say(run, tmp_path: Path) -> None:
    from raydr.evaluate import evaluate

    best = run["ckpts"][3]
    # A third checkpoint validated between the two, whose weights are ruined: adding it to
    # the soup lowers dev, so the greedy soup must leave it out.
    ruined = ruined_copy(best, best.with_name(checkpoint.dir_name(4)))
    Ledger.find(run["dir"]).append(done_row("mixed", 4, str(ruined), {"nDCG@10": 0.85}))
    scorer = blend.DevScorer(best, "nDCG@10", None)
    try:
        record = blend.mix(best, "auto", tmp_path / "auto", scorer, grid=(0.0, 0.5, 1.0))
        by_alpha = record["dev"]["by_alpha"]
        assert set(by_alpha) == {0.0, 0.5, 1.0} and len(set(by_alpha.values())) == 3
        best_alpha = max(by_alpha, key=by_alpha.get)
        assert record["dev"]["best_alpha"] == best_alpha
        # The chosen α: the smallest whose per-query dev values trail the best's by at most one
        # standard error of the difference.
        per = {a: scorer.per_query[f"alpha={a}"] for a in by_alpha}

        def close(a: float) -> bool:
            d = np.array([per[best_alpha][q] - per[a][q] for q in per[a]])
            return d.mean() <= d.std(ddof=1) / np.sqrt(len(d))

        assert record["alpha"] == min(a for a in by_alpha if close(a))
        assert all(sum(per[a].values()) / len(per[a]) == pytest.approx(by_alpha[a]) for a in per)
        # Each dev score is the candidate's own, on dev: α = 1 scores as the checkpoint does
        # there, α = 0 as the base; neither is its test score.
        on = {}
        for split in ("dev", "test"):
            cfg = scorer.cfg.model_copy(
                update={"data": scorer.cfg.data.model_copy(update={"split": split})}
            )
            on[split] = [evaluate(cfg, str(m)).metrics["nDCG@10"] for m in (best, run["base"])]
        assert [by_alpha[1.0], by_alpha[0.0]] == pytest.approx(on["dev"], abs=1e-9)
        assert on["dev"] != pytest.approx(on["test"], abs=1e-3)
        kept = blend.kept_checkpoints(_rows(run), "nDCG@10")
        assert kept == [best, ruined, run["ckpts"][5]]  # best validated first
        soup = blend.soup(kept, tmp_path / "greedy", "greedy", scorer)
    finally:
        scorer.close()
    assert not scorer.scratch.exists()
    first, bad, good = soup["dev"]["greedy"]
    assert first["added"] == best.name and bad["added"] == ruined.name
    assert bad["nDCG@10"] < first["nDCG@10"] and not bad["kept"]
    assert good["kept"] == (good["nDCG@10"] >= first["nDCG@10"])
    assert ruined.as_posix() not in soup["ingredients"]
    assert len(soup["ingredients"]) == (2 if good["kept"] else 1)


def _rows(run: dict) -> list[dict]:
    return Ledger.find(run["dir"]).results()


def test_best_mix_and_soup_write_models_and_bad_input_is_one_line(
    run, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "exported"
    assert main(["best", str(run["dir"]), "--export", str(out), "--mix", "0.25"]) == 0
    assert json.loads((out / "raydr.json").read_text())["blend"]["alpha"] == 0.25
    assert main(["best", str(run["dir"]), "--export", str(out), "--soup", "uniform"]) == 0
    meta = json.loads((out / "raydr.json").read_text())
    assert len(meta["blend"]["ingredients"]) == 2
    capsys.readouterr()

    def error(*argv: str) -> str:
        assert main(["best", str(run["dir"]), *argv]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("raydr: error:"), line
        return line

    assert "--mix" in error("--export", str(out), "--mix", "1.5")
    assert "[0, 1]" in error("--export", str(out), "--mix", "-0.1")
    assert "--export" in error("--mix", "0.5")
    assert "choose one" in error("--export", str(out), "--mix", "0.5", "--soup", "uniform")
    # A base of another architecture: the checkpoint's model.name names a BERT of another
    # vocabulary (its word embeddings have another shape).
    from raydr.testing.synthetic import tiny_bert

    other = tiny_bert(tmp_path / "other", {"cell", "star"})
    ckpt = run["ckpts"][3]
    meta = json.loads((ckpt / "raydr.json").read_text())
    meta["config"]["model"]["name"] = str(other)
    (ckpt / "raydr.json").write_text(json.dumps(meta))
    with pytest.raises(RaydrError, match=r"not the architecture of .*expected shape"):
        blend.mix(ckpt, 0.5, tmp_path / "never")
    assert not (tmp_path / "never").exists()
    shutil.rmtree(out)
