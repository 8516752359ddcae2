"""`proximo eval --video` writes playable mp4 files with one frame per step plus the first."""
import imageio.v2 as imageio

from proximo.cli import main


import pytest


@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", []),
                                           ("proximo/CartPoleNoVel-v1", ["--policy", "lstm", "--rnn-hidden", "8"])])
def test_eval_records_mp4(tmp_path, capsys, env_id, extra):
    run_dir = tmp_path / "run"
    assert main(["train", env_id, *extra, "--total-steps", "256", "--n-steps", "64", "--num-envs", "4",
                 "--batch-size", "64", "--n-epochs", "1", "--eval-episodes", "1", "--quiet", "--no-tensorboard",
                 "--run-dir", str(run_dir)]) == 0
    assert main(["eval", str(run_dir), "--episodes", "1", "--video", str(tmp_path / "vid"),
                 "--video-episodes", "2"]) == 0
    out = capsys.readouterr().out
    videos = sorted((tmp_path / "vid").glob("episode-*.mp4"))
    assert [v.name for v in videos] == ["episode-000.mp4", "episode-001.mp4"]
    reader = imageio.get_reader(videos[0])
    frames = reader.count_frames()
    first_return = float(out.split("video: ")[1].split("(return ")[1].split(")")[0])
    assert frames == int(first_return) + 1  # CartPole: reward 1 per step, plus the reset frame
    assert reader.get_data(0).std() > 0  # a drawn picture, not a blank frame
