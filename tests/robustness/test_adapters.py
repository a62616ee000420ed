"""robustness.adapters: adapt_loss (the worked example of docs/adopting.md) and torchmetrics."""

import builtins
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aam.training.losses import MultiTaskLoss
from robustness.adapters import adapt_loss, nan_diagonal, pad_ids
from robustness.errors import HarnessUsageError, InvalidTargetError
from robustness.target import load_metrics_target

DOCS = Path(__file__).resolve().parents[2] / "docs" / "adopting.md"

#: Another team's copy of the losses, as docs/adopting.md describes it: other names, the
#: count arguments in another order, excluded unifrac pairs marked NaN, nucleotide padding
#: marked by id 0 (ids 1..V, logits with a pad column), ``unifrac_loss`` in forward's dict.
THEIRLIB = """
import torch
from aam.training.losses import MultiTaskLoss, compute_pairwise_distances


class AAMLoss(torch.nn.Module):
    def __init__(self, unifrac_weight=1.0, nuc_weight=1.0, class_weights=None,
                 target_weight=1.0, count_weight=1.0, regression="mse"):
        super().__init__()
        self.core = MultiTaskLoss(
            penalty=unifrac_weight, nuc_penalty=nuc_weight, class_weights=class_weights,
            target_penalty=target_weight, count_penalty=count_weight,
            target_loss_type=regression,
        )

    def target_loss(self, pred, true, is_classifier):
        return self.core.compute_target_loss(pred, true, is_classifier)

    def count_loss(self, mask, pred, true):
        return self.core.compute_count_loss(pred, true, mask)

    @staticmethod
    def _marked(true):
        return true.dim() == 2 and true.shape[0] == true.shape[1] and bool(
            torch.isnan(true).diagonal().all())

    def unifrac_loss(self, pred, true, encoder_type):
        if encoder_type != "unifrac" or not self._marked(true):
            if encoder_type == "unifrac" and true.dim() == 2:
                return torch.mean((pred.float() - true.float()) ** 2)  # nothing marked: all pairs
            return self.core.compute_base_loss(pred, true, encoder_type)
        eye = torch.eye(true.shape[0], dtype=torch.bool, device=true.device)
        return self.core.compute_base_loss(pred, torch.where(eye, 0.0, true), encoder_type)

    def nucleotide_loss(self, logits, ids):
        mask = ids != 0
        return self.core.compute_nucleotide_loss(logits[..., 1:], (ids - 1).clamp(min=0), mask)

    def forward(self, outputs, targets, is_classifier=False, encoder_type="unifrac"):
        outputs, targets = dict(outputs), dict(targets)
        if "nuc_predictions" in outputs and "nucleotides" in targets:
            ids = targets["nucleotides"]
            targets["nuc_mask"] = ids != 0
            targets["nucleotides"] = (ids - 1).clamp(min=0)
            outputs["nuc_predictions"] = outputs["nuc_predictions"][..., 1:]
        true = targets.get("base_target")
        unmarked = encoder_type == "unifrac" and true is not None and not self._marked(true)
        if encoder_type == "unifrac" and true is not None and not unmarked:
            eye = torch.eye(true.shape[0], dtype=torch.bool, device=true.device)
            targets["base_target"] = torch.where(eye, 0.0, true)
        result = self.core(outputs, targets, is_classifier=is_classifier,
                           encoder_type=encoder_type)
        pred = outputs.get("base_prediction")
        if pred is None and "embeddings" in outputs:
            pred = compute_pairwise_distances(outputs["embeddings"])
        if unmarked and pred is not None and true.dim() == 2:
            # Nothing marked NaN: this library counts every pair, the diagonal included.
            base = self.unifrac_loss(pred, true, encoder_type)
            shift = self.core.penalty * (base - result["base_loss"])
            result = {**result, "base_loss": base, "total_loss": result["total_loss"] + shift}
        return {("unifrac_loss" if k == "base_loss" else k): v for k, v in result.items()}
"""


def _doc_block(marker: str) -> str:
    """The python block that follows ``marker`` in docs/adopting.md."""
    text = DOCS.read_text()
    match = re.search(re.escape(marker) + r"\s*```python\n(.*?)```", text, re.S)
    assert match, f"{marker} not followed by a python block in {DOCS}"
    return match.group(1)


def _gate(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROBUSTNESS_")}
    return subprocess.run(
        [sys.executable, "-m", "robustness", "gate", "--profile", "dev", "--workers", "0",
         "--metrics", "none", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.fixture
def their_repository(tmp_path):
    (tmp_path / "theirlib.py").write_text(THEIRLIB)
    (tmp_path / "mylosses_target.py").write_text(_doc_block("<!-- adapter example -->"))
    return tmp_path


RULES = "C-REF-1,C-MASK-1"


def test_the_documented_adapter_passes_the_gate(their_repository):
    run = _gate(their_repository, "--target", "mylosses_target:MultiTaskLoss", "--rules", RULES)
    assert run.returncode == 0, run.stdout + run.stderr
    assert " 0 FAIL" in run.stdout


def test_an_adapter_that_forgets_a_convention_fails_the_gate(their_repository):
    # Broken variant: the NaN-diagonal convention left out, so the wrapped unifrac loss
    # counts the diagonal pairs too.
    source = (their_repository / "mylosses_target.py").read_text()
    broken = re.sub(r'"compute_base_loss": nan_diagonal\(\),\s*', "", source)
    broken = broken.replace('"forward": [nan_diagonal(), ', '"forward": [')
    assert broken != source
    (their_repository / "broken_target.py").write_text(broken)
    run = _gate(their_repository, "--target", "broken_target:MultiTaskLoss", "--rules", "C-REF-1")
    assert run.returncode == 1, run.stdout + run.stderr
    assert re.search(r"C-REF-1\s+base_loss\s+FAIL", run.stdout)


def test_adapted_loss_forwards_to_the_wrapped_loss_and_keeps_its_defaults():
    Loss = adapt_loss(MultiTaskLoss, kwargs={"count_penalty": None})
    loss = Loss(penalty=2.0, count_penalty=5.0)
    assert loss.inner.penalty == 2.0
    assert loss.inner.count_penalty == 1.0  # not passed on: the wrapped default
    pred, true = torch.randn(2, 3, 1), torch.randn(2, 3, 1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(
        loss.compute_count_loss(pred, true, mask), loss.inner.compute_count_loss(pred, true, mask)
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"kwargs": {"weight": "w"}}, "unknown constructor keyword 'weight'", id="kw"),
        pytest.param({"methods": {"compute_loss": "x"}}, "unknown method 'compute_loss'", id="m"),
        pytest.param({"methods": {"compute_base_loss": "nope"}}, "has no method 'nope'", id="own"),
        pytest.param({"outputs": {"unifrac": "u"}}, "unknown term 'unifrac'", id="term"),
        pytest.param(
            {"arguments": {"compute_count_loss": ("mask", "pred")}},
            "unknown argument of compute_count_loss 'pred'",
            id="argument",
        ),
    ],
)
def test_adapt_loss_rejects_names_that_do_not_exist_in_one_line(options, message):
    with pytest.raises(HarnessUsageError, match=message) as info:
        adapt_loss(MultiTaskLoss, **options)
    assert "\n" not in str(info.value)


def test_nan_diagonal_marks_a_copy():
    true = torch.rand(3, 3)
    before = true.clone()
    named = nan_diagonal()("compute_base_loss", {"base_target": true, "encoder_type": "unifrac"})
    assert torch.isnan(named["base_target"].diagonal()).all()
    assert torch.equal(true, before)


@pytest.mark.parametrize(
    ("pred_dtype", "marked_dtype"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float32),
        (torch.float16, torch.float32),
    ],
)
@pytest.mark.parametrize("true_dtype", [torch.int64, torch.bool])
def test_nan_diagonal_makes_an_integer_target_floating_in_the_prediction_s_dtype(
    pred_dtype, marked_dtype, true_dtype
):
    # Integer and bool unifrac targets are valid input, computed in the prediction's dtype
    # (half as float32); NaN needs a floating dtype, and only that one keeps the value.
    true = torch.tensor([[0, 1], [1, 0]]).to(true_dtype)
    pred = torch.zeros(2, 2, dtype=pred_dtype)
    for method, named in (
        ("compute_base_loss", {"base_prediction": pred, "base_target": true}),
        ("forward", {"outputs": {"base_prediction": pred}, "targets": {"base_target": true}}),
    ):
        named = nan_diagonal()(method, {**named, "encoder_type": "unifrac"})
        marked = named["base_target"] if "base_target" in named else named["targets"]["base_target"]
        assert marked.dtype == marked_dtype
        assert torch.isnan(marked.diagonal()).all()
        assert marked[0, 1].item() == 1
    assert true.dtype == true_dtype


def test_pad_ids_keeps_the_cross_entropy_and_refuses_what_it_cannot_represent():
    logits = torch.randn(2, 3, 4, 5)
    ids = torch.randint(0, 5, (2, 3, 4))
    mask = torch.rand(2, 3, 4) > 0.3
    named = pad_ids(0)(
        "compute_nucleotide_loss",
        {"nuc_predictions": logits, "nucleotides": ids, "nuc_mask": mask},
    )
    assert named["nuc_predictions"].shape == (2, 3, 4, 6)
    assert torch.equal(named["nucleotides"][~mask], torch.zeros_like(ids[~mask]))
    assert torch.equal(named["nucleotides"][mask], ids[mask] + 1)
    ours = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1))[mask]
    theirs = torch.log_softmax(named["nuc_predictions"], -1)
    theirs = theirs.gather(-1, named["nucleotides"].unsqueeze(-1))[mask]
    torch.testing.assert_close(theirs, ours)
    convert = pad_ids(0)
    bad_ids, bad_mask = ids.clone(), mask.clone()
    bad_ids[0, 0, 0], bad_mask[0, 0, 0] = -1, True  # would become the pad id: refused
    with pytest.raises(ValueError, match=r"nuc_loss: 1 nucleotide id\(s\) at valid positions"):
        convert(
            "compute_nucleotide_loss",
            {"nuc_predictions": logits, "nucleotides": bad_ids, "nuc_mask": bad_mask},
        )
    with pytest.raises(ValueError, match=r"nuc_loss: nuc_mask shape \(2, 3\) does not match"):
        convert(
            "compute_nucleotide_loss",
            {"nuc_predictions": logits, "nucleotides": ids, "nuc_mask": mask[..., 0]},
        )


# ------------------------------------------------------------------------------ torchmetrics

# torchmetrics is an optional extra, not part of ``.[test]``: a fresh machine may lack it.
_HAS_TORCHMETRICS = importlib.util.find_spec("torchmetrics") is not None


@pytest.mark.skipif(
    not _HAS_TORCHMETRICS,
    reason="torchmetrics not installed: pip install 'aam-robustness[torchmetrics]'",
)
def test_torchmetrics_target_has_the_metrics_interface_and_computes_with_torchmetrics():
    target = load_metrics_target("robustness.adapters.torchmetrics")
    got = target.compute_regression_metrics(
        torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.0, 2.5, 3.0])
    )
    assert got["mse"] == pytest.approx((0.25 + 1.0) / 3)
    got = target.compute_classification_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert got["accuracy"] == pytest.approx(2 / 3)
    assert got["confusion_matrix"].tolist() == [[1, 1], [0, 1]]


def test_torchmetrics_missing_is_a_usage_error_with_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_torchmetrics(name, *args, **kwargs):
        if name == "torchmetrics" or name.startswith("torchmetrics."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "robustness.adapters.torchmetrics", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_torchmetrics)
    with pytest.raises(
        InvalidTargetError, match=r"pip install 'aam-robustness\[torchmetrics\]'"
    ) as info:
        load_metrics_target("robustness.adapters.torchmetrics")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(builtins, "__import__", real_import)
    if _HAS_TORCHMETRICS:  # later tests get the real adapter back
        importlib.import_module("robustness.adapters.torchmetrics")
