# The run on a lent GPU machine (see make_payload.py for getting the payload there):
#   1. MPNet P1 alone, so its timings are its own: intent-ci and naive, then the full retrain and
#      the linear probe, under a time limit (MP_T seconds);
#   2. a sweep of add-intent settings for MiniLM on P1's val split, one process per setting,
#      all sharing one base release and the GPU;
#   3. the throughput suite, if time is left.
# Everything lands in $OUT. BUDGET (seconds) bounds the whole run.
#   cp .gpu/c5 /tmp/chunks/ && BUDGET=560 MP_T=270 bash scripts/device/run.sh
T0=$(date +%s); left() { echo $(( ${BUDGET:-540} - ($(date +%s) - T0) )); }
source scripts/device/setup.sh
python3 scripts/device/unpack.py /tmp/site /tmp/payload || exit 1
D=/tmp/payload/data_full.json
echo "== MPNet P1 (intent-ci, naive, full retrain, probe), test report; $(left) s left"
timeout ${MP_T:-280} python3 scripts/bench_incremental.py --data $D --backbone /tmp/payload/mpnet --protocols P1 --methods intent-ci naive --workdir /tmp/mp --out $OUT/bench_incremental_mpnet_gpu > $OUT/mpnet.log 2>&1
echo "mpnet rc $? after $(( $(date +%s) - T0 )) s"; grep -a "P1 \|retrain\|probe" $OUT/mpnet.log | head -30
cp /tmp/mp/partial.json $OUT/mpnet_partial.json 2>/dev/null
echo "== MiniLM sweep; $(left) s left"
SW="python3 scripts/bench_incremental.py --data $D --protocols P1 --split val --no-probe"
mkdir -p /tmp/sw
timeout 90 $SW --no-retrain --methods --workdir /tmp/sw/base --out /tmp/sw/base/res > /tmp/sw/base.log 2>&1
echo "base rc $? after $(( $(date +%s) - T0 )) s"
R=$(( $(left) - 25 ))
declare -A CFG=(
 [kd0.5]='{"distill":{"weight":0.5}}' [kd1]='{"distill":{"weight":1.0}}' [kd2]='{"distill":{"weight":2.0}}'
 [lr025]='{"train":{"add_intent_lr_scale":0.25}}' [lr1]='{"train":{"add_intent_lr_scale":1.0}}'
 [ep2]='{"train":{"add_intent_epochs":2}}' [ep5]='{"train":{"add_intent_epochs":5}}'
 [T1]='{"distill":{"temperature":1.0}}' [T4]='{"distill":{"temperature":4.0}}'
 [kd1ep5]='{"distill":{"weight":1.0},"train":{"add_intent_epochs":5}}' )
for n in "${!CFG[@]}"; do
  mkdir -p /tmp/sw/$n; cp -r /tmp/sw/base/cache /tmp/sw/$n/
  OMP_NUM_THREADS=1 timeout $R $SW --no-retrain --methods --method "$n=${CFG[$n]}" --workdir /tmp/sw/$n --out /tmp/sw/$n/res > /tmp/sw/$n.log 2>&1 &
done
mkdir -p /tmp/sw/control; cp -r /tmp/sw/base/cache /tmp/sw/control/
OMP_NUM_THREADS=1 timeout $R $SW --methods intent-ci --workdir /tmp/sw/control --out /tmp/sw/control/res > /tmp/sw/control.log 2>&1 &
OMP_NUM_THREADS=1 timeout $R $SW --no-retrain --methods --init-config '{"replay":{"per_intent":40}}' --method 'rep40x2={"replay":{"new_ratio":2.0}}' --workdir /tmp/sw/rep40x2 --out /tmp/sw/rep40x2/res > /tmp/sw/rep40x2.log 2>&1 &
wait
echo "sweep done after $(( $(date +%s) - T0 )) s"
grep -a -h "P1 .* v[0-9]:\|full retrain" /tmp/sw/*.log | tee $OUT/sweep_summary.txt
(cd /tmp/sw && tar czf $OUT/sweep.tgz $(ls */res.json */partial.json *.log 2>/dev/null))
L=$(left); echo "== throughput suite; $L s left"
[ $L -gt 60 ] && timeout $(( L - 10 )) python3 scripts/bench_throughput.py gpu --out $OUT/bench_throughput_gpu 2>&1 | tail -30
echo "all done after $(( $(date +%s) - T0 )) s"
