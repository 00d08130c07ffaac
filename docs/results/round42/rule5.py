"""Round 42's rule 5 (docs/experiments.md), applied to the score files: `loss.area_balance=0.5` against the defaults,
both trained on the same machine, on two more proxies, paired by seed (0 and 1):

- `bs`: the wide BSData proxy (built at 256x640, trained at 256x256), 0 real anomalies: `z256area` against
  `z256here`; rule 2's limits, and also `real_defects` pixel AUROC within 0.002 and AUPRO within 0.005,
  `tiny_real_pastes` and `faint_real_pastes` image AUROC not below;
- `mt`: the Magnetic Tile proxy with its five training shots: `shotsarea` against `shotshere`; rule 2's limits.

Rule 2's limits (round 41's): image AUROC on "all" and `real_defects` within 0.003, every other subset's within
0.005; pixel AUROC and AUPRO on "all" within 0.003, the AUPRO error on "all" at most 3 % above the reference's,
every subset's pixel AUROC within 0.005; the real images' pixel AUROC per defect type other than `break` within
0.005 (BSData's one type is `pitting`). Training minutes are reported, not ruled (rule 3 was judged on the Magnetic
Tile proxy). The setting passes rule 5 only if both proxies pass.

    PYTHONPATH=.:benchmarks python docs/results/round42/rule5.py [--only bs|mt] [--seeds 0,1] \
        [--runs-bs pv_bsdata_wide/runs] [--runs-mt pv_magnetic_tile/runs] [rule5.json]

`proxy_rules.py` prints its own rule numbers: its "rule 1" rows are the required figures listed here, its "rule 2"
the rest of rule 2's limits.
"""
import json
import os
import sys
import tempfile

import proxy_rules
from proxy_rules import IMAGE_RULE, PIXEL_RULE, REAL_TYPES, seed_suffix, seeds_option, training_minutes

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = (0, 1)
LIMITS = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
          "--require", "all:-0.003", "--require", "real_defects:-0.003",
          "--harm", "0.005", "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")
# proxy: (file prefix, candidate, reference, category folder of the runs, its further rules)
PROXIES = {
    "bs": ("Z_bs", "z256area", "z256here", "bsdata",
           ("--require", "pixel_auroc:pitting:-0.005", "--require", "pixel_auroc:real_defects:-0.002",
            "--require", "aupro:real_defects:-0.005", "--require", "tiny_real_pastes:0",
            "--require", "faint_real_pastes:0")),
    "mt": ("Z_mt", "shotsarea", "shotshere", "magnetic_tile",
           tuple(a for t in REAL_TYPES if t != "break" for a in ("--require", f"pixel_auroc:{t}:-0.005"))),
}


def option(argv: list, name: str):
    """argv without `name VALUE` and the value (None without it)."""
    if name not in argv:
        return argv, None
    i = argv.index(name)
    if i + 1 >= len(argv):
        raise SystemExit(f"{name}: expected a value")
    return argv[:i] + argv[i + 2:], argv[i + 1]


def judge(proxy: str, seeds: tuple, runs) -> dict:
    """One proxy's verdict: proxy_rules' rows and failures, the files (named without machine paths) and, with the
    runs' folder, the training minutes."""
    prefix, cand, ref, category, extra = PROXIES[proxy]
    files = {n: [os.path.join(HERE, f"{prefix}_{n}{seed_suffix(s)}.json") for s in seeds] for n in (cand, ref)}
    print(f"== {proxy}: {cand} against {ref}, seeds {', '.join(map(str, seeds))}")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.json")
        rc = proxy_rules.main(["--candidate", *files[cand], "--reference", *files[ref], *LIMITS, *extra,
                               "--out", out])
        if rc == 2:
            raise SystemExit(2)
        with open(out) as f:
            result = json.load(f)
    result["candidate_files"] = [os.path.relpath(p, os.path.dirname(HERE)) for p in files[cand]]
    result["reference_files"] = [os.path.relpath(p, os.path.dirname(HERE)) for p in files[ref]]
    if runs is not None:
        minutes = {n: training_minutes([os.path.join(runs, f"{n}{seed_suffix(s)}", category) for s in seeds])
                   for n in (cand, ref)}
        result["training_minutes"] = minutes
        print("training minutes (reported, not ruled): " +
              "; ".join(f"{n} {' / '.join(f'{m:.1f}' for m in v)}" for n, v in minutes.items()))
    return result


if __name__ == "__main__":
    argv, seeds = seeds_option(sys.argv[1:], SEEDS)
    argv, only = option(argv, "--only")
    argv, runs_bs = option(argv, "--runs-bs")
    argv, runs_mt = option(argv, "--runs-mt")
    proxies = [only] if only else list(PROXIES)
    if any(p not in PROXIES for p in proxies):
        raise SystemExit(f"--only: expected one of {sorted(PROXIES)}")
    results = {p: judge(p, seeds, {"bs": runs_bs, "mt": runs_mt}[p]) for p in proxies}
    passes = all(r["passes"] for r in results.values())
    verdict = ("passes" if passes and set(proxies) == set(PROXIES) else
               "fails" if not passes else "open (one proxy judged)")
    print(f"rule 5 ({', '.join(proxies)}): {verdict}")
    if argv:
        with open(argv[0], "w") as f:
            json.dump({"seeds": list(seeds), "proxies": results, "verdict": verdict}, f, indent=1)
    sys.exit(0)
