#!/bin/bash
# Issue 16's ShapeWorld proof: PPO, ReMax, RLOO and GRPO from the shipped SFT model, each with the
# exact judge as a verifiable reward and with the Fact-RM, 40 iterations of 64 generated responses
# (ReMax: 32 sampled + 32 greedy). Needs the Fact-RLHF study's data and reward model (README).
# A finished run is skipped, so a rerun continues the list. Then: eval/rl_compare.py (its docstring).
#   bash scripts/rl_study.sh
set -u
cd "$(dirname "$0")/.."
export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
[ -x .venv/bin/deepspeed ] && export PATH="$PWD/.venv/bin:$PATH"  # the project's environment (make setup)
JUDGE_RM='reward_model=null'
JUDGE_FN='reward_functions=[{spec: "mmalign.rl.reward_fns:shapeworld_judge"}]'
REMAX='preset=remax rollout_batch_size=32 strategy.micro_batch_size=8'
RLOO='preset=rloo num_samples=4 rollout_batch_size=16 strategy.micro_batch_size=4'
GRPO='preset=grpo num_samples=4 rollout_batch_size=16 strategy.micro_batch_size=4'
mkdir -p runs/rl
run() {
  local name=$1
  shift
  if [ -d "runs/rl/$name/final" ]; then echo "skip $name (done)"; return; fi
  echo "$(date +%T) start $name"
  local rc=0
  deepspeed --master_port 29611 --num_gpus 2 train/ppo.py --config configs/ppo/tiny_shapeworld.yaml \
    out="runs/rl/$name" "$@" > "runs/rl/$name.log" 2>&1 || rc=$?
  echo "$(date +%T) end $name rc=$rc"
  if [ "$rc" != 0 ]; then echo "failed: see runs/rl/$name.log"; exit "$rc"; fi
}
# $REMAX etc. are split into words on purpose; the judge items are one argument each
run grpo_judge $GRPO "$JUDGE_RM" "$JUDGE_FN"
run remax_judge $REMAX "$JUDGE_RM" "$JUDGE_FN"
run rloo_judge $RLOO "$JUDGE_RM" "$JUDGE_FN"
run ppo_judge "$JUDGE_RM" "$JUDGE_FN"
run remax_fact $REMAX
run ppo_fact
run grpo_fact $GRPO
run rloo_fact $RLOO
