"""Apply a validation round's decision rules to score_fusion.py results: a candidate against a reference, paired by
seed.

    python benchmarks/proxy_rules.py --candidate F_cand_s0.json F_cand_s1.json \
        --reference F_ref_s0.json F_ref_s1.json [--rule map0.5] [--gain 0.003] [--harm 0.005] [--pixel-harm 0.003]

Each file is the `--out` of `score_fusion.py --subsets --rules prnet,map0.5` on one trained run (image AUROC of
`--rule`, the released image score; pixel AUROC and AUPRO of `--pixel-rule`'s map, by default `prnet`, the head's
map, which is the library's anomaly map). A candidate image score on the same runs (round 13) is read from the
candidate files with `--candidate-rule`: `--candidate F_s0.json F_s1.json --reference F_s0.json F_s1.json
--candidate-rule zsum0.5`; a candidate map (round 14) with `--candidate-pixel-rule pz0.5`. Per-subset pixel figures
(files scored with `--pixel-groups`) are named `pixel_auroc:GROUP` and `aupro:GROUP`. The i-th candidate file is
compared with
the i-th reference file (the same training seed), and every figure is the mean over the seeds. The rules the rounds
in docs/experiments.md write before their runs:

1. gain: image AUROC of `--rule` on the `--gain-group` ("all") at least `--gain` above the reference
   (`--gain 0` leaves that out, as for a second proxy that only has to show no harm); and each `--require
   FIGURE:MIN` (repeatable) asks the mean difference on FIGURE (a group's image AUROC, or a per-subset pixel
   figure) to be at least MIN (round 12: "all" not below the reference and the region swaps +0.01: `--gain 0
   --require all:0 --require swap_unseen_shapes:0.01`; round 14: `--require pixel_auroc:swap_unseen_shapes:0.01`);
2. no harm: no proxy subset (`--subsets`, the groups proxy_validation.py makes) below the reference by more than
   `--harm` image AUROC, and the map's pixel AUROC and AUPRO on "all" within `--pixel-harm`; with
   `--pixel-subset-harm X` also each subset's pixel AUROC within X; with `--aupro-error-harm R` (rounds from 16 on)
   also the error (1 − AUPRO, mean over the seeds) on "all" at most R·100 % above the reference's: near the
   ceiling an absolute limit lets through a harm that is large relative to what is left. (Not for pixel AUROC:
   its error on the proxies, about 0.002, varies by about 10 % from seed to seed.)

Prints one row per figure (candidate per seed, reference per seed, mean difference, and what breaks a rule) and
the verdict; exits 0 if the candidate passes, 1 if it fails, 2 on unusable input. `--out` writes the same as JSON.
A round's own docs/results/roundNN/decide.py calls `decide_with_time`: these rules plus a cost rule on the runs'
training minutes (`training_minutes`), and the decision file naming its score files without machine paths.
Reading the reference from files, not from a table typed by hand, keeps the comparison exact; proxy runs are
deterministic, so a reference's run scored again gives the same file.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Optional, Sequence

from prnet.provenance import arithmetic_differences
from proxy_validation import APART, EXTENDED, PERLIN

SUBSETS = (PERLIN, EXTENDED, *APART)  # every subset proxy_validation.py makes
PIXEL = ("pixel_auroc", "aupro")


# Rules 1 and 2 of the training rounds from 34 on, on the default image score and map: the ten real defect images'
# pixel AUROC at least +0.005 and AUPRO not below; image AUROC on "all" and the real images within 0.003, every
# subset's within 0.005; pixel AUROC and AUPRO on "all" within 0.003, the AUPRO error at most 3 % up, every subset's
# pixel AUROC within 0.005 (docs/experiments.md, round 34)
IMAGE_RULE, PIXEL_RULE = "zsum0.25k25", "pq99"  # the default image score and anomaly map
REAL_DEFECT_RULES = ("--rule", IMAGE_RULE, "--pixel-rule", PIXEL_RULE, "--gain", "0",
                     "--require", "pixel_auroc:real_defects:0.005", "--require", "aupro:real_defects:0",
                     "--require", "all:-0.003", "--require", "real_defects:-0.003", "--harm", "0.005",
                     "--pixel-harm", "0.003", "--pixel-subset-harm", "0.005", "--aupro-error-harm", "0.03")


def requirement(text: str) -> tuple[str, float]:
    """'GROUP:MIN' -> (GROUP, MIN) for --require."""
    group, sep, least = text.rpartition(":")
    try:
        if not sep or not group:
            raise ValueError
        return group, float(least)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GROUP:MIN (e.g. swap_unseen_shapes:0.01), got {text!r}")


# Magnetic Tile's defect types. The proxy's real defect images are two of each; a 0-shot run's per-type group
# (score_fusion's test/<type>/) holds one of them, the other lies in real_unseen_defects and counts only in the pooled
# real_defects. One type, break, sets most of that pooled figure's spread (docs/experiments.md, "by type").
REAL_TYPES = ("blowhole", "break", "crack", "fray", "uneven")


def by_type(candidate: Sequence[str], reference: Sequence[str], pixel_rule: str = PIXEL_RULE,
            candidate_pixel_rule: Optional[str] = None) -> dict:
    """Per defect type of the proxy's real images, the candidate's pixel AUROC of `pixel_rule`'s map (or
    `candidate_pixel_rule`'s, a candidate map on the same runs) minus the reference's, per paired seed (the files in
    order) and on the mean; and `without_break`, the mean over the other types per seed."""
    cand = [figures(f, IMAGE_RULE, (), candidate_pixel_rule or pixel_rule, REAL_TYPES) for f in candidate]
    ref = [figures(f, IMAGE_RULE, (), pixel_rule, REAL_TYPES) for f in reference]
    out = {t: [c[f"pixel_auroc:{t}"] - r[f"pixel_auroc:{t}"] for c, r in zip(cand, ref)] for t in REAL_TYPES}
    result = {t: {"diff": d, "mean": sum(d) / len(d)} for t, d in out.items()}
    result["without_break"] = [sum(out[t][i] for t in REAL_TYPES if t != "break") / (len(REAL_TYPES) - 1)
                               for i in range(len(cand))]
    return result


def figures(path: str, rule: str, groups: Sequence[str], pixel_rule: str = "prnet",
            pixel_groups: Sequence[str] = ()) -> dict:
    """{group: image AUROC of `rule`, 'pixel_auroc': ..., 'aupro': ... of `pixel_rule`'s map, and for each of
    `pixel_groups` 'pixel_auroc:GROUP' and 'aupro:GROUP'} in one score_fusion.py JSON file."""
    try:
        with open(path) as f:
            result = json.load(f)
        image, metrics = result["image_auroc"][rule], result["metrics"][pixel_rule]
    except OSError as e:
        raise SystemExit(f"proxy_rules: cannot read {path}: {e}")
    except (ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"proxy_rules: {path} is not score_fusion.py output with the image score {rule!r} and the "
                         f"map {pixel_rule!r} (run it with --rules {pixel_rule},{rule} and --subsets): {e!r}")
    missing = [g for g in groups if g not in image]
    if missing:
        raise SystemExit(f"proxy_rules: {path} has no image AUROC for {missing} (score it with --subsets on a "
                         f"proxy; groups present: {sorted(image)})")
    out = {g: float(image[g]) for g in groups}
    out.update({k: float(metrics[k]) for k in PIXEL})
    if pixel_groups:
        by_group = (result.get("pixel_by_group") or {}).get(pixel_rule, {})
        missing = [g for g in pixel_groups if g not in by_group]
        if missing:
            raise SystemExit(f"proxy_rules: {path} has no pixel figures of {pixel_rule!r} for {missing} (score it "
                             f"with --pixel-groups)")
        out.update({f"{k}:{g}": float(by_group[g][k]) for g in pixel_groups for k in PIXEL})
    return out


def decide(candidate: Sequence[dict], reference: Sequence[dict], *, gain_group: str, gain: float, harm: float,
           pixel_harm: float, subsets: Sequence[str], require: Optional[dict] = None,
           pixel_subset_harm: Optional[float] = None, aupro_error_harm: Optional[float] = None) -> dict:
    """Rows {figure: (candidate values, reference values, mean difference, broken rules or '')} and the verdict.
    `require`: {figure: least mean difference}, more conditions of rule 1; `pixel_subset_harm`: rule 2's limit on
    each subset's pixel AUROC; `aupro_error_harm`: rule 2's limit on the relative rise of AUPRO's error on "all"
    (None: not checked)."""
    if len(candidate) != len(reference) or not candidate:
        raise ValueError(f"give as many reference files as candidate files (paired by seed), got "
                         f"{len(candidate)} and {len(reference)}")
    require = dict(require or {})
    rows, failures = {}, []
    pixel_subsets = [f"pixel_auroc:{s}" for s in subsets] if pixel_subset_harm is not None else []
    for key in dict.fromkeys([gain_group, *require, *subsets, *PIXEL, *pixel_subsets]):
        c = [r[key] for r in candidate]
        ref = [r[key] for r in reference]
        diff = sum(c) / len(c) - sum(ref) / len(ref)
        broken = []
        if key == gain_group and gain > 0 and diff < gain:
            broken.append(f"rule 1: gain {diff:+.4f} < +{gain}")
        if key in require and diff < require[key]:
            broken.append(f"rule 1: {key} {diff:+.4f} < {require[key]:+}")
        if key in PIXEL and diff < -pixel_harm:
            broken.append(f"rule 2: {key} {diff:+.4f} < -{pixel_harm}")
        elif key in pixel_subsets and diff < -pixel_subset_harm:
            broken.append(f"rule 2: {key} {diff:+.4f} < -{pixel_subset_harm}")
        elif key in subsets and diff < -harm:
            broken.append(f"rule 2: {key} {diff:+.4f} < -{harm}")
        if key == "aupro" and aupro_error_harm is not None:
            err_c, err_ref = 1 - sum(c) / len(c), 1 - sum(ref) / len(ref)
            if err_c > (1 + aupro_error_harm) * err_ref:
                rise = err_c / err_ref - 1 if err_ref > 0 else float("inf")
                broken.append(f"rule 2: aupro error {err_ref:.4f} -> {err_c:.4f} "
                              f"({rise:+.1%} > +{aupro_error_harm:.0%})")
        failures.extend(broken)
        rows[key] = {"candidate": c, "reference": ref, "diff": diff, "broken": "; ".join(broken)}
    return {"rows": rows, "failures": failures, "passes": not failures}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", nargs="+", required=True, help="score_fusion.py JSON per seed")
    p.add_argument("--reference", nargs="+", required=True, help="score_fusion.py JSON per seed, same order")
    p.add_argument("--rule", default="map0.5", help="the image score decided on (default map0.5, the released)")
    p.add_argument("--candidate-rule",
                   help="the candidate files' image score, when it is another rule than --rule's (default: --rule)")
    p.add_argument("--pixel-rule", default="prnet",
                   help="the map whose pixel AUROC and AUPRO rule 2 reads (default prnet: the head's map, the "
                        "library's anomaly map; map0.5's p·r^0.5 map is only its image score's)")
    p.add_argument("--candidate-pixel-rule",
                   help="the candidate files' map, when it is another than --pixel-rule's (default: --pixel-rule)")
    p.add_argument("--pixel-subset-harm", type=float, default=None,
                   help="rule 2 also asks each subset's pixel AUROC to be within this of the reference's")
    p.add_argument("--aupro-error-harm", type=float, default=None,
                   help="rule 2's limit on the relative rise of the error (1 - AUPRO) on 'all' (0.03: 3 %%; "
                        "default: not checked)")
    p.add_argument("--gain-group", default="all")
    p.add_argument("--gain", type=float, default=0.003, help="rule 1's gain; 0 leaves rule 1 out")
    p.add_argument("--harm", type=float, default=0.005, help="rule 2's limit per proxy subset (image AUROC)")
    p.add_argument("--pixel-harm", type=float, default=0.003, help="rule 2's limit on pixel AUROC and AUPRO")
    p.add_argument("--require", action="append", type=requirement, default=[], metavar="FIGURE:MIN",
                   help="rule 1 also asks the mean difference on FIGURE (a group, or pixel_auroc:GROUP / "
                        "aupro:GROUP) to be at least MIN (repeatable)")
    p.add_argument("--subsets", type=lambda t: [s for s in t.split(",") if s], default=list(SUBSETS))
    p.add_argument("--out")
    args = p.parse_args(argv)
    subsets = [s for s in args.subsets if s != args.gain_group]
    require = dict(args.require)
    pixel_keys = [k for k in require if k.partition(":")[0] in PIXEL]  # pixel_auroc:GROUP, aupro:GROUP
    groups = list(dict.fromkeys([args.gain_group, *[k for k in require if k not in pixel_keys], *subsets]))
    pixel_groups = list(dict.fromkeys([*[k.partition(":")[2] for k in pixel_keys],
                                       *(subsets if args.pixel_subset_harm is not None else [])]))
    candidate_rule = args.candidate_rule or args.rule
    candidate_pixel_rule = args.candidate_pixel_rule or args.pixel_rule
    try:
        result = decide([figures(f, candidate_rule, groups, candidate_pixel_rule, pixel_groups)
                         for f in args.candidate],
                        [figures(f, args.rule, groups, args.pixel_rule, pixel_groups) for f in args.reference],
                        gain_group=args.gain_group, gain=args.gain, harm=args.harm, pixel_harm=args.pixel_harm,
                        subsets=subsets, require=require, pixel_subset_harm=args.pixel_subset_harm,
                        aupro_error_harm=args.aupro_error_harm)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"proxy_rules: {e}", file=sys.stderr)
        return 2
    print(f"{'figure':<26} {'candidate per seed':<28} {'reference per seed':<28} diff")
    for key, row in result["rows"].items():
        cand = " / ".join(f"{v:.4f}" for v in row["candidate"])
        ref = " / ".join(f"{v:.4f}" for v in row["reference"])
        print(f"{key:<26} {cand:<28} {ref:<28} {row['diff']:+.4f}  {row['broken']}")
    print("verdict:", "passes" if result["passes"] else "fails (" + "; ".join(result["failures"]) + ")")
    other = other_arithmetic(args.candidate, args.reference)
    for i, diffs in other.items():
        pair = f"pair {i + 1} (candidate {args.candidate[i]}, reference {args.reference[i]})"
        print(f"note: {pair}: its machines can't be compared (a file records no provenance)" if diffs is None else
              f"note: {pair} was scored with other arithmetic (candidate -> reference: {'; '.join(diffs)}): "
              f"paired by seed, not by identical arithmetic, so its difference also holds the two machines' own "
              f"divergence")
    result["other_arithmetic"] = {str(i): diffs for i, diffs in other.items()}
    if args.out:
        result.update(candidate_files=list(args.candidate), reference_files=list(args.reference), rule=args.rule,
                      candidate_rule=candidate_rule, pixel_rule=args.pixel_rule,
                      candidate_pixel_rule=candidate_pixel_rule, pixel_subset_harm=args.pixel_subset_harm,
                      aupro_error_harm=args.aupro_error_harm,
                      gain=args.gain, require=require, harm=args.harm, pixel_harm=args.pixel_harm)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["passes"] else 1


def other_arithmetic(candidate: Sequence[str], reference: Sequence[str]) -> dict[int, Optional[list[str]]]:
    """The seed pairs (by index) whose score files were made with other arithmetic (prnet.provenance
    .arithmetic_differences of their provenance; None: not recorded in one of them). A round's pairing by seed
    assumes that the candidate and its reference trained alike up to the candidate's change; on another CPU model or
    GPU the reference's weights would come out otherwise too."""
    out: dict[int, Optional[list[str]]] = {}
    for i, (c, r) in enumerate(zip(candidate, reference)):
        with open(c) as fc, open(r) as fr:
            diffs = arithmetic_differences(json.load(fc).get("provenance"), json.load(fr).get("provenance"))
        if diffs != []:
            out[i] = diffs
    return out


def training_minutes(run_dirs: Sequence[str]) -> list[float]:
    """Training minutes of each run (a category folder holding train.py's train_log.csv): its epochs' seconds
    summed."""
    minutes = []
    for d in run_dirs:
        with open(os.path.join(d, "train_log.csv")) as f:
            minutes.append(sum(float(row["seconds"]) for row in csv.DictReader(f)) / 60)
    return minutes


def decide_with_time(rules: Sequence[str], candidate: Sequence[str], reference: Sequence[str], *,
                     minutes: Optional[dict] = None, max_ratio: float, names: tuple[list, list],
                     out: Optional[str] = None, extra: Optional[dict] = None) -> int:
    """A round's decide.py: `main`'s rules (`rules`, its options without the files) on the candidate and reference
    score files, then a cost rule, the candidate's mean training minutes at most `max_ratio` times the
    reference's (`minutes`: {candidate name: [...], reference name: [...]}, in that order, the names as the record
    keeps them; None: not checked). Prints the verdict; `out` also gets the cost rule, the verdict and the files
    under `names` (candidate's, reference's: how the record names them, without machine paths) and `extra` (a
    round's own further entries). Returns 2 on unusable input, else 0."""
    rc = main(["--candidate", *candidate, "--reference", *reference, *rules] + (["--out", out] if out else []))
    if rc == 2:
        return 2
    holds = None
    if minutes is not None:
        cand_min, ref_min = minutes.values()
        ratio = sum(cand_min) / len(cand_min) / (sum(ref_min) / len(ref_min))
        holds = bool(ratio <= max_ratio)
        print("training minutes, per seed: " + "; ".join(f"{v} {' / '.join(f'{m:.1f}' for m in t)}"
                                                         for v, t in minutes.items()))
        print(f"cost rule (training time at most {max_ratio}x the reference's): {ratio:.2f}x, "
              f"{'holds' if holds else 'fails'}")
    verdict = "fails" if rc == 1 or holds is False else "passes" if holds else "open (cost rule not checked)"
    print(f"verdict (every rule): {verdict}")
    if out:
        with open(out) as f:
            result = json.load(f)
        result.update(candidate_files=list(names[0]), reference_files=list(names[1]), training_minutes=minutes,
                      rule_3_holds=holds, verdict=verdict, **(extra or {}))
        with open(out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def seeds_option(argv: Sequence[str], default: Sequence[int]) -> tuple[list, tuple]:
    """A round's decide.py arguments without `--seeds 0,1` and the seeds it names (`default` without it): a round
    stopped early applies its rules to the seeds it made."""
    argv = list(argv)
    if "--seeds" not in argv:
        return argv, tuple(default)
    i = argv.index("--seeds")
    try:
        return argv[:i] + argv[i + 2:], tuple(int(s) for s in argv[i + 1].split(","))
    except (IndexError, ValueError):
        raise SystemExit(f"--seeds: expected a comma-separated list of seeds, e.g. --seeds 0,1 (got {argv[i + 1:]})")


def runs_option(argv: Sequence[str]) -> tuple[list, Optional[str]]:
    """A round's decide.py arguments without `--runs RUNS_DIR` and the folder it names (None without it)."""
    argv = list(argv)
    if "--runs" not in argv:
        return argv, None
    i = argv.index("--runs")
    if i + 1 >= len(argv):
        raise SystemExit("--runs: expected the folder of the proxy runs")
    return argv[:i] + argv[i + 2:], argv[i + 1]


def seed_suffix(seed: int) -> str:
    """How proxy_validation.py names a run's seed: nothing for seed 0, -seedN otherwise."""
    return "" if seed == 0 else f"-seed{seed}"


def same_trajectory(runs: str, candidate: str, reference: str, seeds: Sequence[int]) -> dict:
    """Per seed: whether the candidate's run trained the same weights epoch by epoch as the reference's (equal
    `epoch_fingerprints` in their results.json, under runs/<name>[-seedN]/magnetic_tile), or None where the
    reference's run folder is not there. For a candidate that changes only what happens after the last epoch."""
    def fingerprints(name: str, seed: int):
        path = os.path.join(runs, f"{name}{seed_suffix(seed)}", "magnetic_tile", "results.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)["epoch_fingerprints"]

    out = {}
    for seed in seeds:
        cand, ref = fingerprints(candidate, seed), fingerprints(reference, seed)
        if cand is None:
            raise FileNotFoundError(f"the candidate's run {candidate}{seed_suffix(seed)} has no results.json in {runs}")
        out[str(seed)] = None if ref is None else bool(cand == ref and len(cand) > 0)
    return out


def decide_against_round34(argv: Sequence[str], here: str, candidate: str, max_ratio: float,
                           seeds: Sequence[int] = (0, 1, 2), extra: Optional[dict] = None,
                           later_seeds: Optional[str | dict] = None,
                           rules: Sequence[str] = REAL_DEFECT_RULES) -> int:
    """A Magnetic Tile proxy round judged against the default `ratio25`, paired by seed: seeds 0-2 are round 34's
    score files, any further seed's reference file (Z_mt_ratio25-seedN.json) lies in `later_seeds` (a sibling
    folder's name, e.g. round37, or {seed: such a name}, e.g. seeds 3-5 round37 and 6-7 by_type; default: the round's
    own folder). `here` is the round's folder, holding Z_mt_<candidate>[-seedN].json; round 34's folder is its
    sibling. argv: [--runs RUNS_DIR] [decision.json]; with --runs the cost rule reads the candidate's training
    minutes there, and the reference's from round 34's decision.json (seeds 0-2) or there too (further seeds).
    `extra`: further entries of the decision file (decide_with_time); `rules`: `main`'s options (default rounds
    34-38's REAL_DEFECT_RULES). The decision file also holds the paired differences per defect type of the real
    images (`by_type`), which are printed too."""
    argv = list(argv)
    round34, ref = os.path.join(os.path.dirname(here), "round34"), "ratio25"

    def later(seed: int) -> str:
        name = later_seeds.get(seed) if isinstance(later_seeds, dict) else later_seeds
        return here if name is None else os.path.join(os.path.dirname(here), name)

    in_round34 = (0, 1, 2)  # round 34's seeds, in its record's order
    minutes = None
    argv, runs = runs_option(argv)
    if runs is not None:
        with open(os.path.join(round34, "decision.json")) as f:
            recorded = json.load(f)["training_minutes"][ref]

        def run_minutes(name: str, seed: int) -> float:
            return training_minutes([os.path.join(runs, f"{name}{seed_suffix(seed)}", "magnetic_tile")])[0]

        minutes = {candidate: [run_minutes(candidate, s) for s in seeds],
                   ref: [recorded[s] if s in in_round34 else run_minutes(ref, s) for s in seeds]}
    cand_files = [os.path.join(here, f"Z_mt_{candidate}{seed_suffix(s)}.json") for s in seeds]
    ref_files = [os.path.join(round34 if s in in_round34 else later(s), f"Z_mt_{ref}{seed_suffix(s)}.json")
                 for s in seeds]
    missing = [f for f in (*cand_files, *ref_files) if not os.path.isfile(f)]
    if missing:
        print(f"proxy_rules: missing score files: {', '.join(missing)}", file=sys.stderr)
        return 2
    types = by_type(cand_files, ref_files)
    for t in REAL_TYPES:
        print(f"pixel AUROC of the real {t} images, {candidate} - {ref} per seed: "
              + " / ".join(f"{d:+.4f}" for d in types[t]["diff"]) + f" (mean {types[t]['mean']:+.4f})")
    return decide_with_time(rules, cand_files, ref_files, minutes=minutes, max_ratio=max_ratio,
                            names=([os.path.basename(f) for f in cand_files],
                                   [os.path.relpath(f, here) for f in ref_files]),
                            out=argv[0] if argv else None, extra={"by_type": types, **(extra or {})})


if __name__ == "__main__":
    sys.exit(main())
