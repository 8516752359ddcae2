"""A whole GRPO run as one process, for before/after timing of the LLM hot path with farm-bench:
40 steps of 16 prompts x 8 completions on the built-in tiny model and `add` (2 digits), no evaluation
between steps. Prints the run's step tokens/s and its CPU seconds.

    farm-bench -n 5 --vs "env PYTHONPATH=OLD_CHECKOUT python benchmarks/grpo_step_speed.py" -- \
        env PYTHONPATH=. python benchmarks/grpo_step_speed.py
"""
import sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import summary_speeds
from proximo.llm import GRPO
with tempfile.TemporaryDirectory() as d:
    t = GRPO("tiny", task="add", digits=2, steps=40, prompts_per_step=16, group_size=8, eval_every=0,
             num_eval_prompts=8, tensorboard=False, run_dir=d, seed=1)
    start = time.process_time()
    s = t.train()
    summary_speeds(s)  # a run that counted no tokens measured nothing: stop, do not print 0
    print(f"step_tokens_per_s {s['step_tokens_per_s']:.0f} cpu {time.process_time()-start:.2f}")
