#!/usr/bin/env bash
# Re-measure the figures quoted in README "Measured results" and docs/MEASUREMENTS.md (issues 2-4) on this machine, one bench after another.
# Usage: scripts/measure_all.sh [DRAFTER]   (default: the shipped drafter; the lines before the session-9 ones were
# measured with drafter v4, earlier checkpoints in git history). Writes docs/bench/*.json and a store
# docs/bench/measure.sqlite (git-ignored). Takes about five hours on a 2-core CPU; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DR=()
if [ $# -ge 1 ]; then DR=(--drafter "$1"); fi
STORE=docs/bench/measure.sqlite
export OMP_WAIT_POLICY=PASSIVE
mkdir -p docs/bench
b() { local name=$1; shift; echo "== $name" >&2; "$PY" -m dtree bench "${DR[@]}" --store "$STORE" --out "docs/bench/$name.json" "$@"; }
# issue 2 (chain tau on the first 20 GSM8K test questions) and issue 3 (speed vs AR), float32
b gsm8k20-fp32 --dataset gsm8k --limit 20 --methods ar,chain,ddtree:16,caddtree,caddtree-adapt-rawcv --max-new-tokens 128 --dtype float32
# issue 3 at the issue's size: first 50 GSM8K test questions and first 50 HumanEval problems, 128 new tokens (about
# 40 and 80 minutes; ddtree:16/32/64 left out for time, the issue-4 lines below sweep every fixed budget at 64 tokens)
I3=ar,chain,ddtree:8,caddtree,caddtree-adapt-rawcv
b issue3-gsm8k50-fp32 --dataset gsm8k --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
b issue3-humaneval50-fp32 --dataset humaneval --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
# issue 3, every fixed budget at 128 tokens (session 7; ddtree:4 in a second bench beside caddtree; HumanEval without
# ddtree:32/64, for time)
b issue3-gsm8k50-fixed-fp32 --dataset gsm8k --limit 50 --methods ar,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k50-b4-fp32 --dataset gsm8k --limit 50 --methods ddtree:4,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval50-fixed-fp32 --dataset humaneval --limit 50 --methods ar,ddtree:4,ddtree:8,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
# issue 3: chain tau on the other sets and speed vs AR (the smaller, earlier benches)
b issue3-mtbench10-fp32 --dataset mt-bench --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k5-bf16 --dataset gsm8k --limit 5 --methods ar,chain,caddtree --max-new-tokens 128 --dtype bfloat16
# issue 4: caddtree and its calibrated variant against every fixed budget (oracle), replay vs live, unimodality
# (the drafter-v2 GSM8K table in the README, docs/bench/issue4-gsm8k8*.json, also had caddtree-spine in --methods)
# (drafter v3's benches, docs/bench/issue4-{gsm8k8-v3,humaneval8}*, had the same list without the -adapt and -rawcv variants)
I4=ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,ddtree:128,caddtree,caddtree-cal,caddtree-adapt,caddtree-rawcv,caddtree-adapt-rawcv
b issue4-gsm8k8-v4 --dataset gsm8k --limit 8 --methods "$I4" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-gsm8k8-v4-report.json > docs/bench/issue4-gsm8k8-v4-report.md
b issue4-humaneval8-v4 --dataset humaneval --limit 8 --methods "$I4" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-humaneval8-v4-report.json > docs/bench/issue4-humaneval8-v4-report.md
# issue 4 at the issue's size: 50 prompts per set (ddtree:128, never near the best fixed budget in the 8-prompt
# benches above, left out for time: the oracle is then chosen over B in 4..64)
I50=ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree,caddtree-rawcv,caddtree-adapt-rawcv
b issue4-gsm8k50-v4 --dataset gsm8k --limit 50 --methods "$I50" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-gsm8k50-v4-report.json > docs/bench/issue4-gsm8k50-v4-report.md
b issue4-humaneval50-v4 --dataset humaneval --limit 50 --methods "$I50" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-humaneval50-v4-report.json > docs/bench/issue4-humaneval50-v4-report.md
# issue 4, the -fallback variant (session 8): 128 new tokens, AR and the best fixed budget of the session-7 benches beside it
IF=caddtree,caddtree-adapt-rawcv,caddtree-adapt-rawcv-fallback
b issue4-humaneval50-fallback-fp32 --dataset humaneval --limit 50 --methods "ar,ddtree:4,$IF" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-humaneval50-fallback-report.json > docs/bench/issue4-humaneval50-fallback-report.md
b issue4-gsm8k50-fallback-fp32 --dataset gsm8k --limit 50 --methods "ar,ddtree:8,$IF" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-gsm8k50-fallback-report.json > docs/bench/issue4-gsm8k50-fallback-report.md
# drafter v5 (session 9: GSM8K + code answers): issue 3's speed and chain tau, HumanEval with the best fixed budget of
# the session-7 benches beside it (issue 4's oracle check); GSM8K on 20 questions without a fixed budget (for time)
b issue3-humaneval50-v5-fp32 --dataset humaneval --limit 50 --methods ar,chain,ddtree:4,caddtree,caddtree-adapt-rawcv-fallback --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue3-humaneval50-v5-report.json > docs/bench/issue3-humaneval50-v5-report.md
b issue3-gsm8k20-v5-fp32 --dataset gsm8k --limit 20 --methods ar,chain,caddtree,caddtree-adapt-rawcv --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue3-gsm8k20-v5-report.json > docs/bench/issue3-gsm8k20-v5-report.md
# session 10: 2-4 token verifies padded to 5 tokens on CPU fp32 (A/B in one process, same trees, outputs compared),
# then issue 4's whole oracle sweep (B = 4..128) with drafter v5 and padded verifies, at 64 new tokens like session 7's
"$PY" scripts/verify_pad_ab.py --out docs/bench/verify-pad-ab.json
IP=ar,ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,ddtree:128,caddtree,caddtree-adapt-rawcv-fallback
b issue4-humaneval50-pad-fp32 --dataset humaneval --limit 50 --methods "$IP" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-humaneval50-pad-report.json > docs/bench/issue4-humaneval50-pad-report.md
b issue4-gsm8k50-pad-fp32 --dataset gsm8k --limit 50 --methods "$IP" --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-gsm8k50-pad-report.json > docs/bench/issue4-gsm8k50-pad-report.md
# session 10, after the second padding width (6-8 tokens run 8 wide): caddtree against the oracle of the sweep above
# (ddtree:4 on both sets; no fixed budget of the sweep has a 6-8 token verify, so the sweep's ranking stands)
b issue4-humaneval50-pad8-fp32 --dataset humaneval --limit 50 --methods ddtree:4,caddtree --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-humaneval50-pad8-report.json > docs/bench/issue4-humaneval50-pad8-report.md
b issue4-gsm8k50-pad8-fp32 --dataset gsm8k --limit 50 --methods ddtree:4,caddtree --max-new-tokens 64 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue4-gsm8k50-pad8-report.json > docs/bench/issue4-gsm8k50-pad8-report.md
# session 11: few-row matmul kernels tuned per machine (dtree/kernels.py; A/B in one process, outputs compared), then
# issue 3's speed and chain tau at 128 tokens with them (fp32), and issue 4's oracle check among the fixed budgets run
"$PY" scripts/linear_kernels_ab.py --skip-forward --dataset gsm8k --limit 6 --methods ar,ddtree:1,ddtree:3,ddtree:4,ddtree:7 \
    --max-new-tokens 64 --pad-off 5,8 --pad-on 2,4,5,6,8,9,16 --out docs/bench/linear-kernels-ab-gsm8k6.json
I3=ar,chain,ddtree:3,ddtree:8,caddtree
b issue3-gsm8k50-kernels-fp32 --dataset gsm8k --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue3-gsm8k50-kernels-report.json > docs/bench/issue3-gsm8k50-kernels-report.md
b issue3-humaneval50-kernels-fp32 --dataset humaneval --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --out docs/bench/issue3-humaneval50-kernels-report.json > docs/bench/issue3-humaneval50-kernels-report.md
# session 12: drafter v6's first bench (GSM8K only, for time; AR ran at the VM's slow-state speed, see session 13)
b issue3-gsm8k20-v6-fp32 --dataset gsm8k --limit 20 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype float32
# session 13: drafter v6 on an idle machine (the VM in its slower state, about 1.8x slower than in session 11),
# issue 3's sets at 128 tokens in both dtypes; reports pick the oracle among the fixed budgets run (ddtree:3, ddtree:8)
b issue3-gsm8k50-v6-fp32 --dataset gsm8k --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-gsm8k50-v6-report.json > docs/bench/issue3-gsm8k50-v6-report.md
b issue3-humaneval50-v6-fp32 --dataset humaneval --limit 50 --methods "$I3" --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-humaneval50-v6-report.json > docs/bench/issue3-humaneval50-v6-report.md
b issue3-mtbench20-v6-fp32 --dataset mt-bench --limit 20 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k10-v6-bf16 --dataset gsm8k --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype bfloat16
# session 13: every fixed budget side by side with drafter v6 (the oracle at issue 3's 128 tokens)
b issue3-gsm8k20-v6-sweep-fp32 --dataset gsm8k --limit 20 --methods ar,ddtree:2,ddtree:3,ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-gsm8k20-v6-sweep-report.json > docs/bench/issue3-gsm8k20-v6-sweep-report.md
# session 14: drafter v7 (before shipping: --drafter data/ck8; the same folder is now the shipped checkpoint),
# and the cost of other drafter shapes (the block-size-8 cap reads the v6 benches' chain runs by their tags)
b issue3-gsm8k50-v7-fp32 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval50-v7-fp32 --dataset humaneval --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype float32
"$PY" scripts/drafter_shape_costs.py --repeats 30 --train-repeats 6 --threads 1 --store "$STORE" \
    --tags bench:20261130T224315.441082Z:gsm8k,bench:20261130T231033.655245Z:humaneval,bench:20261130T234115.451128Z:mt-bench \
    --out docs/bench/drafter-shape-costs.json
# session 15: drafter v8, block size 8 (before shipping: --drafter data/ck9; the same folder is now the shipped checkpoint)
b issue3-gsm8k50-v8-fp32 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval50-v8-fp32 --dataset humaneval --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype float32
# session 16: drafter v8 in bfloat16 (the faster dtype in this machine state), MT-Bench, and every fixed budget side by
# side in both dtypes (the oracle); reports pick the oracle among the fixed budgets run
b issue3-gsm8k50-v8-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v8-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:3,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-mtbench20-v8-fp32 --dataset mt-bench --limit 20 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k20-v8-sweep-fp32 --dataset gsm8k --limit 20 --methods ar,ddtree:2,ddtree:3,ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-gsm8k20-v8-sweep-fp32-report.json > docs/bench/issue3-gsm8k20-v8-sweep-fp32-report.md
b issue3-gsm8k20-v8-sweep-bf16 --dataset gsm8k --limit 20 --methods ar,ddtree:3,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-gsm8k20-v8-sweep-bf16-report.json > docs/bench/issue3-gsm8k20-v8-sweep-bf16-report.md
b issue3-humaneval20-v8-sweep-bf16 --dataset humaneval --limit 20 --methods ar,ddtree:4,ddtree:8,ddtree:16,ddtree:32,caddtree --max-new-tokens 128 --dtype bfloat16
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-humaneval20-v8-sweep-bf16-report.json > docs/bench/issue3-humaneval20-v8-sweep-bf16-report.md
# session 17: drafter v9 (before shipping: --drafter data/ck10; the same folder is now the shipped checkpoint), bf16 with
# the bf16 oracle budget of session 16 (ddtree:16), then a short fp32 lossless check
b issue3-gsm8k50-v9-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v9-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k10-v9-fp32 --dataset gsm8k --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval10-v9-fp32 --dataset humaneval --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
# session 18: the drafter's dtype is chosen by timing at load (auto; bf16 on this session's CPU, which has AVX512-BF16
# and drafts 2.3x faster in bf16 than in float32); drafter v9. First with caddtree's old greedy stop on the measured Cv:
b issue3-gsm8k50-v9dt-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:8,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v9dt-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:8,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# then with the argmax stop on the measured Cv (dtree.trees.uses_argmax_stop)
b issue3-gsm8k50-argmax-bf16 --dataset gsm8k --limit 50 --methods ar,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-argmax-bf16 --dataset humaneval --limit 50 --methods ar,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-mtbench20-argmax-bf16 --dataset mt-bench --limit 20 --methods ar,chain,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k10-argmax-fp32 --dataset gsm8k --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval10-argmax-fp32 --dataset humaneval --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
# session 19: drafter v10 (before shipping: --drafter data/ck11; the same folder is now the shipped checkpoint) on fresh
# bf16 self-distilled answers; bf16 with the oracle budget of sessions 16-18 (ddtree:16); no chain on GSM8K, MT-Bench or
# float32 line this time (session time)
b issue3-humaneval50-v10-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v10-bf16 --dataset gsm8k --limit 50 --methods ar,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# session 20: drafter v11 (before shipping: --drafter data/ck12; the same folder is now the shipped checkpoint), the
# same two lines
b issue3-humaneval50-v11-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v11-bf16 --dataset gsm8k --limit 50 --methods ar,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# session 21: drafter v12 (before shipping: --drafter data/ck13; the same folder is now the shipped checkpoint), the
# two bf16 lines with chain on both sets, then a short float32 lossless check (10 prompts per set)
b issue3-humaneval50-v12-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v12-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval10-v12-fp32 --dataset humaneval --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k10-v12-fp32 --dataset gsm8k --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
# session 22: drafter v13 (before shipping: --drafter data/ck14; the same folder is now the shipped checkpoint), the
# two bf16 lines again, each profiling on a settled machine (a minute after training and generation exited)
b issue3-humaneval50-v13-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v13-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# session 23: drafter v13 (shipped) again. Float32 lossless check (first 10 prompts of each set), MT-Bench first turns
# (first 40, the chain-tau figure), a bf16 sweep of the fixed budgets with the oracle report on 20 prompts of each set,
# then the two 50-prompt bf16 lines again with the bench's rotating method order and its speedup_paired column
b issue3-humaneval10-v13-fp32 --dataset humaneval --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k10-v13-fp32 --dataset gsm8k --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-mtbench40-v13-bf16 --dataset mt-bench --limit 40 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k20-v13-sweep-bf16 --dataset gsm8k --limit 20 --methods ar,ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-gsm8k20-v13-sweep-bf16-report.json > docs/bench/issue3-gsm8k20-v13-sweep-bf16-report.md
b issue3-humaneval20-v13-sweep-bf16 --dataset humaneval --limit 20 --methods ar,ddtree:4,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
"$PY" scripts/issue4_report.py --store "$STORE" --latest --oracle-budgets all --out docs/bench/issue3-humaneval20-v13-sweep-bf16-report.json > docs/bench/issue3-humaneval20-v13-sweep-bf16-report.md
b issue3-humaneval50-v13-rot-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v13-rot-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# session 24: drafter v14 (before shipping: --drafter data/ck15; the same weights are now the shipped checkpoint).
# MT-Bench first turns, chain only (the chain-tau figure), then the two 50-prompt bf16 lines
b issue3-mtbench40-v14-chain-bf16 --dataset mt-bench --limit 40 --methods chain --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v14-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v14-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
# then (after shipping) the float32 lossless check on the first 10 prompts of each set
b issue3-humaneval10-v14-fp32 --dataset humaneval --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k10-v14-fp32 --dataset gsm8k --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
# session 25: v14 chain tau and chain losslessness in float32 on the full sets (ar and chain only, for time)
b issue3-humaneval50-v14-chain-fp32 --dataset humaneval --limit 50 --methods ar,chain --max-new-tokens 128 --dtype float32
b issue3-gsm8k50-v14-chain-fp32 --dataset gsm8k --limit 50 --methods ar,chain --max-new-tokens 128 --dtype float32
b issue3-mtbench40-v14-chain-fp32 --dataset mt-bench --limit 40 --methods ar,chain --max-new-tokens 128 --dtype float32
# session 25's KD A/B benches ran on the two A/B drafters (data/ckA, data/ckB; their training commands are in
# docs/bench/soft-ab-training.json), not on the shipped one:
#   bench --drafter data/ckA --dataset gsm8k --limit 20 --methods chain,ddtree:16 --max-new-tokens 128 --dtype bfloat16
#     --out docs/bench/soft-ab-gsm8k20-A-bf16.json   (and data/ckB -> soft-ab-gsm8k20-B-bf16.json)
# session 26: drafter v15 (before shipping: --drafter data/v15; the same weights are now the shipped checkpoint).
# the two 50-prompt bf16 lines (ar, chain, caddtree), MT-Bench first turns chain only, then a float32 lossless check
b issue3-humaneval50-v15-bf16 --dataset humaneval --limit 50 --methods ar,chain,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v15-bf16 --dataset gsm8k --limit 50 --methods ar,chain,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-mtbench40-v15-chain-bf16 --dataset mt-bench --limit 40 --methods chain --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k10-v15-fp32 --dataset gsm8k --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
# session 27: v15 (shipped then; now in git history at commit 7a998ef, pass it as DRAFTER) again, every fixed budget beside caddtree (the oracle) in bf16, one bench after another
# on an idle machine, then the float32 check of every prompt (ddtree:64 as the largest tree; run beside a helper's
# checks, so only tau and mismatches count)
b issue3-humaneval50-v15-oracle-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v15-oracle-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v15-fp32 --dataset humaneval --limit 50 --methods ar,chain,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k50-v15-fp32 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
b issue3-mtbench40-v15-fp32 --dataset mt-bench --limit 40 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
# session 28: the 2-layer candidate v16a of the layer A/B (data/v16a; its data and training commands are in
# docs/bench/layers-ab-training.json), not shipped, so these lines are not run here:
#   bench --drafter data/v16a --dataset mt-bench --limit 40 --methods chain --max-new-tokens 128 --dtype bfloat16
#     --out docs/bench/issue3-mtbench40-v16-chain-bf16.json
#   bench --drafter data/v16a --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128
#     --dtype bfloat16 --out docs/bench/issue3-humaneval50-v16-bf16.json   (and gsm8k -> issue3-gsm8k50-v16-bf16.json)
# session 30: drafter v17 (before shipping: --drafter data/v17; the same weights are now the shipped checkpoint), the
# two 50-prompt bf16 lines and MT-Bench first turns chain only on an idle machine, then (after shipping) a float32
# lossless check on the first 10 prompts of each set
b issue3-gsm8k50-v17-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v17-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-mtbench40-v17-chain-bf16 --dataset mt-bench --limit 40 --methods chain --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k10-v17-fp32 --dataset gsm8k --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-humaneval10-v17-fp32 --dataset humaneval --limit 10 --methods ar,chain,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
b issue3-mtbench10-v17-fp32 --dataset mt-bench --limit 10 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
# session 31: the shipped v17 with every fixed budget beside caddtree (the oracle) in bf16, one bench after another on
# an idle machine, then the float32 check of every prompt (ddtree:64 as the largest tree; run beside the tests and a
# fresh-user check, so only tau and mismatches count)
b issue3-humaneval50-v17-oracle-bf16 --dataset humaneval --limit 50 --methods ar,chain,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-gsm8k50-v17-oracle-bf16 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:8,ddtree:16,ddtree:32,ddtree:64,caddtree --max-new-tokens 128 --dtype bfloat16
b issue3-humaneval50-v17-fp32 --dataset humaneval --limit 50 --methods ar,chain,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
b issue3-gsm8k50-v17-fp32 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:64,caddtree --max-new-tokens 128 --dtype float32
b issue3-mtbench40-v17-fp32 --dataset mt-bench --limit 40 --methods ar,chain,caddtree --max-new-tokens 128 --dtype float32
# session 33: a CPU without AVX-512 or bf16 (AVX2 only), float32, after the drafter head got its own kernel; then the
# draft-step and decode A/B of that kernel (python scripts/draft_head_ab.py --limit 6 --out docs/bench/draft-head-ab.json)
b issue3-gsm8k50-v17-avx2-fp32 --dataset gsm8k --limit 50 --methods ar,chain,ddtree:4,ddtree:8,ddtree:16,caddtree --max-new-tokens 128 --dtype float32
"$PY" scripts/draft_head_ab.py --limit 6 --methods ar,ddtree:4 --max-new-tokens 64 --out docs/bench/draft-head-ab.json
