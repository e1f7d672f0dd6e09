"""`vesalius plan DATASET`: fingerprint a segmentation dataset and write an editable plan."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tests.engines.common.msd_factory import blob_case, write_msd
from vesalius.cli.main import app
from vesalius.engines.common.plan import SegmentationPlan

runner = CliRunner()


def test_plan_writes_a_plan_and_a_fingerprint(tmp_path: Path) -> None:
    cases = [blob_case(f"case_{n}", (24, 20, 16), (0.8, 0.8, 1.5), seed=n) for n in range(4)]
    dataset = write_msd(tmp_path / "Fake", cases)
    result = runner.invoke(app, ["plan", str(dataset), "-o", str(tmp_path / "out" / "fake.plan.json")])
    assert result.exit_code == 0, result.output
    assert "Fake: 4 cases, 3 classes; target spacing 0.8 x 0.8 x 1.5 mm" in result.output
    plan = SegmentationPlan.load(tmp_path / "out" / "fake.plan.json")
    assert plan.num_classes == 3
    assert list(plan.target_spacing) == [0.8, 0.8, 1.5]
    assert (tmp_path / "out" / "Fake.fingerprint.json").is_file()


def test_plan_names_the_missing_label_file(tmp_path: Path) -> None:
    dataset = write_msd(tmp_path / "Fake", [blob_case("case_0", (16, 16, 16), (1.0, 1.0, 1.0))])
    (dataset / "labelsTr" / "case_0.nii.gz").unlink()
    result = runner.invoke(app, ["plan", str(dataset), "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2
    assert "case_0.nii.gz" in result.output
    assert "Traceback" not in result.output


def test_plan_takes_a_narrower_network_and_a_batch_size_for_small_compute(tmp_path: Path) -> None:
    cases = [blob_case(f"case_{n}", (24, 20, 16), (1.0, 1.0, 1.0), seed=n) for n in range(3)]
    dataset = write_msd(tmp_path / "Fake", cases)
    out = tmp_path / "cpu.plan.json"
    arguments = ["plan", str(dataset), "-o", str(out), "--base-filters", "8", "--batch-size", "3"]
    result = runner.invoke(app, [*arguments, "--set", "training.epochs=7"])
    assert result.exit_code == 0, result.output
    plan = SegmentationPlan.load(out)
    assert (plan.batch_size, plan.training.epochs) == (3, 7)
    assert plan.network.filters[:3] == [8, 16, 32]
    bad = runner.invoke(app, ["plan", str(dataset), "-o", str(out), "--base-filters", "0"])
    assert bad.exit_code == 2
    assert "base_filters" in bad.output
