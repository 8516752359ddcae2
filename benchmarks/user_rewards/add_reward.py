"""A user's reward module, as `proximo llm grpo --reward benchmarks/user_rewards/add_reward.py:correct_sum`
would load it: chat completions in, one float per completion out."""


def correct_sum(prompts, completions, answer, **columns):
    """1.0 when the assistant's reply is exactly the sum in the `answer` column, else 0.0."""
    return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]
