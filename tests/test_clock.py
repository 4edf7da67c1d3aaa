"""The run's length as one contract (src/clock.py): parts read it through their handle, the run
records who did, and a higher trainer.max_steps continues a finished run only when nobody did."""

import json

import pytest
import torch

from src.api import compose, train
from src.build import CHECKPOINT, build_components
from src.checks import ConfigError
from src.clock import Clock
from src.rundir import RunDirError, check_same_run

# a finished run of one step, then the same run asked to go on to two
SHORT = ["trainer.max_steps=1", "trainer.export=false", "trainer.val_every=0", "device=cpu", "num_threads=1"]
TOY = ["backbone=mog2d", "representation=particles", "representation.n_particles=8", "trainer.dtype=float64"]
# ShapesWorld's prior takes its own 32 px only: a schedule that keeps it still reads the run's length
RESOLUTIONS = "representation.resolution_schedule={resolutions:[32,32],milestones:[0.5]}"


def test_the_clock_records_each_reader_once_in_the_order_of_its_first_read():
    clock = Clock(50)
    schedule, guidance = clock.run_length("schedule", "LinearDecreasing"), clock.run_length("guidance", "SIM")
    assert clock.readers == []
    assert schedule.steps() == 50 and guidance.steps("vsd_after") == 50 and schedule.steps() == 50
    assert clock.readers == ["schedule=LinearDecreasing", "guidance.vsd_after"]
    assert clock.max_steps == 50 and clock.readers == ["schedule=LinearDecreasing", "guidance.vsd_after"]


@pytest.mark.parametrize("overrides, readers", [
    (TOY + ["guidance=sds"], []),  # uniform t: nothing reads the run's length
    (TOY + ["guidance=sim"], []),  # SIM throughout (vsd_after null)
    (TOY + ["guidance=sim", "guidance.vsd_after=0.5"], ["guidance.vsd_after"]),
    (TOY + ["guidance=fsd"], ["schedule=LinearDecreasing"]),
    (TOY + ["guidance=sds", "schedule=dreamtime"], ["schedule=DreamTime"]),
    (["experiment=shapes_modes", "guidance=sds"], []),
    (["experiment=shapes_modes", "guidance=sds", RESOLUTIONS], ["representation.resolution_schedule"]),
])
def test_built_parts_read_the_run_length_exactly_when_their_steps_depend_on_it(overrides, readers):
    assert build_components(compose(overrides)).clock.readers == readers


def test_raising_max_steps_on_a_finished_sim_run_is_refused_naming_vsd_after(tmp_path):
    """Issue 26 item 5: SIM's switch to VSD sits at a fraction of the run (the ShapesWorld preset's
    vsd_after), so a longer run would have switched later; the run is refused, the dir untouched."""
    sim = ["experiment=shapes_modes", "guidance=sim", "camera.n_eval_views=4"]
    train(compose(sim + SHORT), tmp_path)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["run_length_readers"] == ["guidance.vsd_after"]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["run_length_readers"] == ["guidance.vsd_after"]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"trainer.max_steps=1; it cannot be continued to trainer.max_steps=2 "
                                          r"because guidance.vsd_after depend\(s\) on trainer.max_steps"):
        train(compose(sim + SHORT + ["trainer.max_steps=2"]), tmp_path)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_raising_max_steps_on_a_finished_run_with_a_resolution_schedule_is_refused(tmp_path):
    nerf = ["experiment=shapes_modes", "guidance=sds", "camera.n_eval_views=4", RESOLUTIONS]
    train(compose(nerf + SHORT), tmp_path)
    with pytest.raises(ConfigError, match=r"because representation.resolution_schedule depend\(s\) on"):
        train(compose(nerf + SHORT + ["trainer.max_steps=2"]), tmp_path)


def test_the_checkpoint_keeps_the_readers_when_the_run_record_is_gone(tmp_path):
    """The checkpoint's own check (Trainer.load) asks the clock the checkpoint recorded."""
    fsd = TOY + ["guidance=fsd"]
    train(compose(fsd + SHORT), tmp_path)
    (tmp_path / "run_info.json").unlink()
    with pytest.raises(ConfigError, match=r"checkpoint holds this run with trainer.max_steps=1; it cannot be "
                                          r"continued to trainer.max_steps=2 because schedule=LinearDecreasing"):
        train(compose(fsd + SHORT + ["trainer.max_steps=2"]), tmp_path)


def test_a_record_that_does_not_say_who_read_the_length_continues_only_if_no_step_is_kept():
    old, new = {"trainer": {"max_steps": 10}}, {"trainer": {"max_steps": 20}}
    with pytest.raises(RunDirError, match=r"does not record which of its parts read trainer.max_steps"):
        check_same_run("run", old, new, None, lambda: 10)
    check_same_run("run", old, new, None, lambda: None)  # killed while building: nothing kept
    check_same_run("run", old, new, [], lambda: 10)  # nobody read it: the run continues


def test_a_part_that_reads_the_length_only_while_training_is_recorded_by_the_next_checkpoint(tmp_path, monkeypatch):
    """A read at step 5 (a part's handle, held since it was built) reaches run_info.json and the
    checkpoint, so the longer run is refused although nothing read it at build time."""
    from src.trainer import Trainer

    original = Trainer.train_step

    def step(self, k):
        if k == 5:
            self.clock.run_length("guidance", "SDS").steps("late_schedule")
        return original(self, k)

    monkeypatch.setattr(Trainer, "train_step", step)
    sds = TOY + ["guidance=sds", "trainer.export=false", "device=cpu", "num_threads=1", "trainer.checkpoint_every=4"]
    train(compose(sds + ["trainer.max_steps=12"]), tmp_path)
    assert json.loads((tmp_path / "run_info.json").read_text())["run_length_readers"] == ["guidance.late_schedule"]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["run_length_readers"] == ["guidance.late_schedule"]
    monkeypatch.setattr(Trainer, "train_step", original)
    with pytest.raises(ConfigError, match=r"because guidance.late_schedule depend\(s\) on trainer.max_steps"):
        train(compose(sds + ["trainer.max_steps=20"]), tmp_path)
