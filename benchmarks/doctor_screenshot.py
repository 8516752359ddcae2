"""Render `proximo doctor --html` pages in headless Chromium and save PNG screenshots.

By default trains two CartPole runs side by side, a healthy one (the cartpole preset) and a broken one
(learning rate 0.05 with 30 epochs), and writes for each, under benchmarks/results/:
doctor_<name>.txt (the text report), doctor_<name>.html (the page) and doctor_<name>.png (the screenshot).

    python benchmarks/doctor_screenshot.py                     # both runs
    python benchmarks/doctor_screenshot.py --run-dir runs/X --name mine   # an existing run

Chromium comes from Debian: `apt-get install -y chromium`.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proximo.doctor import examine, html_report, text_report  # noqa: E402

RUNS = {
    "healthy": ["--preset", "cartpole"],
    "broken": ["--num-envs", "8", "--n-steps", "32", "--batch-size", "256", "--learning-rate", "0.05",
               "--n-epochs", "30", "--total-steps", "30000"],
}


def find_chromium() -> str:
    """The chromium executable, or exit with how to install it."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("chromium not found; install it with `apt-get update && apt-get install -y chromium`")


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 2200) -> None:
    """Load a local HTML file in headless Chromium (no network use) and write a PNG of the window."""
    with tempfile.TemporaryDirectory() as profile:
        command = [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={width},{height}",
                   "--hide-scrollbars", page.resolve().as_uri()]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")


def report(run_dir: Path, name: str, out: Path, height: int) -> None:
    """Write doctor_<name>.txt/.html/.png for one run directory."""
    result = examine(run_dir)
    text = text_report(result)
    (out / f"doctor_{name}.txt").write_text(text + "\n")
    page = out / f"doctor_{name}.html"
    page.write_text(html_report(result), encoding="utf-8")
    screenshot(page, out / f"doctor_{name}.png", height=height)
    print(text, f"\n-> {page} and {page.with_suffix('.png')}\n", sep="\n")


def main() -> None:
    """Train (or reuse) the runs and render their reports."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, help="render this existing run instead of training two")
    parser.add_argument("--name", default="run", help="file name stem for --run-dir")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None, help="where to train the runs (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--height", type=int, default=2200, help="window height in pixels")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.run_dir is not None:
        report(args.run_dir, args.name, args.out, args.height)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="proximo-doctor-"))
    for name, flags in RUNS.items():
        run_dir = work / name
        if not (run_dir / "updates.jsonl").is_file():
            subprocess.run([sys.executable, "-m", "proximo.cli", "train", "CartPole-v1", "--run-dir", str(run_dir),
                            "--seed", str(args.seed), "--quiet", "--no-tensorboard", *flags], check=True, cwd=ROOT)
        report(run_dir, name, args.out, args.height)


if __name__ == "__main__":
    main()
