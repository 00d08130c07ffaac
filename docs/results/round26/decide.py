"""Round 26's rules (docs/experiments.md): round 25's rules on the same defect images. The candidate is round 25's
(W_bs_wide25<seed>.json, BSData proxy at 256x640); the reference is the 256x256 `ratio25` checkpoints scored on the
wide proxy's test images (X_bs_ratio25<seed>.json here). The cost ratio is round 25's (its decision.json).

Set-up check first: the proxy's real defect images and normals are the same files on both proxies, so the
reference's figures on them must repeat round 24's files (V_bs_ratio25<seed>.json) to every digit.

    python docs/results/round26/decide.py [decision.json]
"""
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
R24, R25 = (os.path.join(HERE, "..", r) for r in ("round24", "round25"))
SAME_FILES = ("pitting", "real_unseen_defects", "real_defects")  # links to the data set's own images

spec = importlib.util.spec_from_file_location("round25_decide", os.path.join(R25, "decide.py"))
r25 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(r25)

cand, ref, old = r25.load(R25, "W_bs_wide25"), r25.load(HERE, "X_bs_ratio25"), r25.load(R24, "V_bs_ratio25")
for seed, (x, v) in enumerate(zip(ref, old)):
    for rule in x["image_auroc"]:
        for g in SAME_FILES:
            if x["image_auroc"][rule][g] != v["image_auroc"][rule][g]:
                sys.exit(f"set-up check fails: seed {seed}, {rule} on {g}: {x['image_auroc'][rule][g]} here, "
                         f"{v['image_auroc'][rule][g]} in round 24's file")
print(f"set-up check: the reference repeats round 24's figures on {', '.join(SAME_FILES)} at both seeds")
cost = json.load(open(os.path.join(R25, "decision.json")))["cost_ratio"]
d = r25.decide(cand, ref, cost)
r25.report(d)
if len(sys.argv) > 1:
    json.dump(d, open(sys.argv[1], "w"), indent=2)
