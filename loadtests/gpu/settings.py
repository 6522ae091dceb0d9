"""What one run measures and how long each phase may take: the device profile (an H200, R50-FPN at
800x1333, within 8 minutes) and the smoke profile (this repository's CPU machines, tiny settings,
every phase exercised in a couple of minutes)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "models" / "shapes"
# The input size the targets are stated at; the device profile's synthetic images have it
# exactly, so R50-FPN's transform (min_size 800, max_size 1333) feeds them to the backbone unresized.
HD_WIDTH, HD_HEIGHT = 1333, 800


@dataclass
class Profile:
    name: str
    # `maskserve` arguments of the device under test and of the reference it is checked against.
    device_args: list[str]
    reference_args: list[str]
    # The model exported in this run (maskexport.export --random ARCH --num-classes N).
    export_arch: str
    export_classes: int
    hd_images: int
    # Width, height of the synthetic JPEGs.
    image_size: list[int]
    fixture_parity_images: int
    main_parity_images: int
    batch_sizes: list[int]
    clients: int
    client_procs: int
    warmup_s: float
    duration_s: float
    bench_runs: int
    eager_batches: list[int]
    eager_s: float
    eager_warmup: int
    eager_min_runs: int
    train_arch: str
    train_batch: int
    train_steps: int
    train_images: int
    train_min_size: int
    train_max_size: int
    train_log_every: int
    # Seconds for the whole run (phases are cut to what is left of it) and per phase.
    budget_s: float
    timeouts: dict[str, float] = field(default_factory=dict)


DEVICE = Profile(
    name="device",
    device_args=["--device", "cuda"],
    reference_args=["--device", "cpu"],
    export_arch="resnet50-fpn",
    export_classes=91,
    hd_images=8,
    image_size=[HD_WIDTH, HD_HEIGHT],
    fixture_parity_images=6,
    main_parity_images=3,
    batch_sizes=[1, 4, 8],
    clients=24,
    client_procs=8,
    warmup_s=6.0,
    duration_s=15.0,
    bench_runs=20,
    eager_batches=[1, 2, 4, 8],
    eager_s=4.0,
    eager_warmup=2,
    eager_min_runs=3,
    train_arch="resnet50-fpn",
    train_batch=8,
    train_steps=40,
    train_images=32,
    train_min_size=800,
    train_max_size=1333,
    train_log_every=5,
    budget_s=440.0,
    timeouts={
        "export": 150,
        "parity": 100,
        "maskserve": 170,
        "floor": 45,
        "eager": 100,
        "train_fp32": 55,
        "train_amp": 55,
    },
)

SMOKE = Profile(
    name="smoke",
    # Both on the CPU: RoIAlign as a graph against maskserve's own kernel, so the check compares two
    # different paths even here.
    device_args=["--device", "cpu", "--roi-align", "graph"],
    reference_args=["--device", "cpu"],
    export_arch="tiny-fpn",
    export_classes=4,
    hd_images=2,
    # Small: PyTorch pastes every mask into the full image, slow on a CPU at 1333x800.
    image_size=[426, 256],
    fixture_parity_images=2,
    main_parity_images=1,
    batch_sizes=[1, 4, 8],
    clients=2,
    client_procs=1,
    warmup_s=1.0,
    duration_s=5.0,
    bench_runs=3,
    eager_batches=[1, 2],
    eager_s=1.0,
    eager_warmup=1,
    eager_min_runs=1,
    train_arch="tiny-fpn",
    train_batch=2,
    train_steps=2,
    train_images=4,
    train_min_size=128,
    train_max_size=224,
    train_log_every=1,
    budget_s=170.0,
    timeouts={
        "export": 60,
        "parity": 40,
        "maskserve": 60,
        "floor": 30,
        "eager": 40,
        "train_fp32": 40,
        "train_amp": 40,
    },
)


@dataclass
class Context:
    """Everything a phase needs, handed to it as one JSON file."""

    profile: Profile
    work: Path
    maskserve: Path
    main_model: Path
    hd: list[Path]
    fixture_samples: list[Path]

    @property
    def device(self) -> str:
        """The device under test, as maskserve's --device names it."""
        return self.profile.device_args[self.profile.device_args.index("--device") + 1]

    def save(self, path: Path) -> None:
        d: dict[str, Any] = asdict(self)
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}
        d["hd"] = [str(p) for p in self.hd]
        d["fixture_samples"] = [str(p) for p in self.fixture_samples]
        path.write_text(json.dumps(d, indent=2))

    @staticmethod
    def load(path: Path) -> Context:
        d = json.loads(path.read_text())
        return Context(
            profile=Profile(**d["profile"]),
            work=Path(d["work"]),
            maskserve=Path(d["maskserve"]),
            main_model=Path(d["main_model"]),
            hd=[Path(p) for p in d["hd"]],
            fixture_samples=[Path(p) for p in d["fixture_samples"]],
        )


def write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2))
