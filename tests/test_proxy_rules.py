"""benchmarks/proxy_rules.py: a round's decision rules applied to score_fusion.py files, paired by seed."""
import json
import os
import shutil

import pytest

import proxy_rules

SUBSETS = proxy_rules.SUBSETS


def _write(path, all_, subset=0.98, pixel=0.998, aupro=0.97, extra_subset=None):
    image = {"all": all_, **{s: subset for s in SUBSETS}, "crack": 0.5}
    if extra_subset:
        image.update(extra_subset)
    # the fused map0.5 map's pixel figures are far off: rule 2 must read the head's map (prnet)
    path.write_text(json.dumps({"image_auroc": {"map0.5": image, "prnet": image},
                                "metrics": {"prnet": {"image_auroc": all_, "pixel_auroc": pixel, "aupro": aupro},
                                            "map0.5": {"image_auroc": all_, "pixel_auroc": 0.5, "aupro": 0.1}}}))
    return str(path)


def test_gain_and_no_harm_pass_and_each_rule_can_fail(tmp_path, capsys):
    ref = [_write(tmp_path / "r0.json", 0.990), _write(tmp_path / "r1.json", 0.986)]
    good = [_write(tmp_path / "c0.json", 0.994), _write(tmp_path / "c1.json", 0.989)]  # mean +0.0035
    assert proxy_rules.main(["--candidate", *good, "--reference", *ref, "--out", str(tmp_path / "d.json")]) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["passes"] and abs(d["rows"]["all"]["diff"] - 0.0035) < 1e-9
    assert d["rows"]["swap_unseen_shapes"]["diff"] == 0.0 and "verdict: passes" in capsys.readouterr().out

    # rule 1: +0.0025 is short of +0.003 (the pairing is by position: the files' order is the seeds' order)
    short = [_write(tmp_path / "s0.json", 0.993), _write(tmp_path / "s1.json", 0.988)]
    assert proxy_rules.main(["--candidate", *short, "--reference", *ref]) == 1
    assert "rule 1" in capsys.readouterr().out
    # ... which a second proxy, asked only for no harm, does not apply
    assert proxy_rules.main(["--candidate", *short, "--reference", *ref, "--gain", "0"]) == 0

    # rule 2: one subset 0.006 below, or AUPRO 0.0035 below, fails even with the gain
    swap = [_write(tmp_path / f"w{i}.json", a, extra_subset={"swap_unseen_shapes": 0.974})
            for i, a in enumerate((0.994, 0.989))]
    assert proxy_rules.main(["--candidate", *swap, "--reference", *ref]) == 1
    assert "rule 2: swap_unseen_shapes -0.0060" in capsys.readouterr().out
    pro = [_write(tmp_path / f"p{i}.json", a, aupro=0.9665) for i, a in enumerate((0.994, 0.989))]
    assert proxy_rules.main(["--candidate", *pro, "--reference", *ref]) == 1
    assert "rule 2: aupro -0.0035" in capsys.readouterr().out


def test_pairs_scored_with_other_arithmetic_are_named(tmp_path, capsys):
    """A seed pair whose files come from another CPU model (or GPU, or package versions) is named, with the fields,
    in the output and the decision file; pairs from the same machine are not; files without provenance are named as
    not comparable."""
    machine = {"versions": {"torch": "2.14.1"}, "device": "cpu", "device_name": "AMD EPYC", "numeric_env": {},
               "torch_threads": 2, "cpu_capability": "AVX512", "cpu_family": "25", "cpu_model": "17",
               "cpu_stepping": "1"}

    def with_provenance(path, value, prov):
        d = json.loads(open(_write(path, value)).read())
        path.write_text(json.dumps({**d, "provenance": prov}))
        return str(path)

    other = {**machine, "cpu_capability": "AVX2", "cpu_model": "1"}
    ref = [with_provenance(tmp_path / "r0.json", 0.990, machine), with_provenance(tmp_path / "r1.json", 0.986, machine)]
    cand = [with_provenance(tmp_path / "c0.json", 0.994, machine), with_provenance(tmp_path / "c1.json", 0.989, other)]
    out = str(tmp_path / "d.json")
    assert proxy_rules.main(["--candidate", *cand, "--reference", *ref, "--out", out]) == 0
    text = capsys.readouterr().out
    assert "pair 2" in text and "cpu_model: '1' -> '17'" in text and "cpu_capability" in text and "pair 1" not in text
    assert set(json.loads(open(out).read())["other_arithmetic"]) == {"1"}
    bare = [_write(tmp_path / "b0.json", 0.994), with_provenance(tmp_path / "b1.json", 0.989, machine)]
    assert proxy_rules.main(["--candidate", *bare, "--reference", *ref]) == 0
    text = capsys.readouterr().out
    assert "pair 1" in text and "can't be compared" in text and "pair 2" not in text


def test_the_relative_error_limit_catches_a_harm_the_absolute_one_lets_through(tmp_path, capsys):
    """Round 16 on: AUPRO 0.970 -> 0.968 is within the absolute 0.003, but its error rises by 6.7 % (> 3 %)."""
    ref = [_write(tmp_path / f"r{i}.json", a, aupro=0.970) for i, a in enumerate((0.990, 0.986))]
    cand = [_write(tmp_path / f"c{i}.json", a, aupro=0.968) for i, a in enumerate((0.994, 0.989))]
    assert proxy_rules.main(["--candidate", *cand, "--reference", *ref]) == 0
    capsys.readouterr()
    args = ["--candidate", *cand, "--reference", *ref, "--aupro-error-harm", "0.03", "--out", str(tmp_path / "d.json")]
    assert proxy_rules.main(args) == 1
    out = capsys.readouterr().out
    assert "rule 2: aupro error 0.0300 -> 0.0320 (+6.7% > +3%)" in out
    assert json.loads((tmp_path / "d.json").read_text())["aupro_error_harm"] == 0.03
    # a rise within 3 % passes: 0.0300 -> 0.0305
    near = [_write(tmp_path / f"n{i}.json", a, aupro=0.9695) for i, a in enumerate((0.994, 0.989))]
    assert proxy_rules.main(["--candidate", *near, "--reference", *ref, "--aupro-error-harm", "0.03"]) == 0
    # pixel AUROC keeps its absolute limit only: 0.998 -> 0.9975 is +25 % of its error, within 0.003
    pixel = [_write(tmp_path / f"x{i}.json", a, pixel=0.9975) for i, a in enumerate((0.994, 0.989))]
    assert proxy_rules.main(["--candidate", *pixel, "--reference", *ref, "--aupro-error-harm", "0.03"]) == 0


def test_unusable_input_is_refused_with_the_reason(tmp_path, capsys):
    ref = _write(tmp_path / "r0.json", 0.99)
    assert proxy_rules.main(["--candidate", ref, ref, "--reference", ref]) == 2  # unpaired
    assert "as many reference files" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps({"image_auroc": {"prnet": {"all": 0.9}}}))
    assert proxy_rules.main(["--candidate", str(tmp_path / "bad.json"), "--reference", ref]) == 2
    assert "bad.json" in capsys.readouterr().err
    # scored with --rules map0.5 alone: no head map to read the pixel figures from
    (tmp_path / "nohead.json").write_text(json.dumps({"image_auroc": {"map0.5": {"all": 0.9}},
                                                      "metrics": {"map0.5": {"pixel_auroc": 0.9, "aupro": 0.8}}}))
    assert proxy_rules.main(["--candidate", str(tmp_path / "nohead.json"), "--reference", ref]) == 2
    assert "--rules prnet,map0.5" in capsys.readouterr().err
    # a test split scored without --subsets has no proxy groups
    (tmp_path / "plain.json").write_text(json.dumps({"image_auroc": {"map0.5": {"all": 0.9}},
                                                     "metrics": {"map0.5": {"pixel_auroc": 0.9, "aupro": 0.8}}}))
    assert proxy_rules.main(["--candidate", str(tmp_path / "plain.json"), "--reference", ref]) == 2
    assert "--subsets" in capsys.readouterr().err


def test_required_groups_are_part_of_rule_1(tmp_path, capsys):
    """Round 12's rule 1: --gain 0 --require all:0 --require swap_unseen_shapes:0.01."""
    ref = [_write(tmp_path / "r0.json", 0.990), _write(tmp_path / "r1.json", 0.986)]
    args = ["--gain", "0", "--require", "all:0", "--require", "swap_unseen_shapes:0.01"]
    swaps_up = {"swap_unseen_shapes": 0.992}  # +0.012 on the swaps
    good = [_write(tmp_path / f"g{i}.json", a, extra_subset=swaps_up) for i, a in enumerate((0.990, 0.987))]
    assert proxy_rules.main(["--candidate", *good, "--reference", *ref, *args]) == 0
    capsys.readouterr()
    # "all" 0.0005 below the reference: within rule 2's harm limit, but rule 1 asks for no loss
    low = [_write(tmp_path / f"l{i}.json", a, extra_subset=swaps_up) for i, a in enumerate((0.990, 0.985))]
    assert proxy_rules.main(["--candidate", *low, "--reference", *ref, *args]) == 1
    assert "rule 1: all -0.0005 < +0.0" in capsys.readouterr().out
    # the swaps up by only +0.008
    few = [_write(tmp_path / f"f{i}.json", a, extra_subset={"swap_unseen_shapes": 0.988})
           for i, a in enumerate((0.990, 0.987))]
    assert proxy_rules.main(["--candidate", *few, "--reference", *ref, *args]) == 1
    assert "rule 1: swap_unseen_shapes +0.0080 < +0.01" in capsys.readouterr().out
    # a malformed requirement is an argument error
    import pytest

    with pytest.raises(SystemExit):
        proxy_rules.main(["--candidate", *good, "--reference", *ref, "--require", "swaps"])


def test_a_candidate_image_score_on_the_same_runs(tmp_path, capsys):
    """Round 13: the candidate is another image score in the same files (--candidate-rule)."""
    image = {"all": 0.990, **{s: 0.980 for s in SUBSETS}}
    fused = {**image, "all": 0.991, "swap_unseen_shapes": 0.995, "small_unseen_spots": 0.974}
    files = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        path.write_text(json.dumps({"image_auroc": {"map0.5": image, "prnet": image, "zsum0.5": fused},
                                    "metrics": {"prnet": {"pixel_auroc": 0.998, "aupro": 0.97}}}))
        files.append(str(path))
    args = ["--candidate", *files, "--reference", *files, "--gain", "0", "--out", str(tmp_path / "d.json")]
    # without --candidate-rule both sides read map0.5: no difference anywhere
    assert proxy_rules.main(args) == 0
    assert json.loads((tmp_path / "d.json").read_text())["rows"]["all"]["diff"] == 0.0
    # the fused score: "all" +0.001, swaps +0.015, but the small spots 0.006 below
    assert proxy_rules.main([*args, "--candidate-rule", "zsum0.5"]) == 1
    out = capsys.readouterr().out
    assert "rule 2: small_unseen_spots -0.0060" in out
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["candidate_rule"] == "zsum0.5" and d["rule"] == "map0.5"
    assert abs(d["rows"]["swap_unseen_shapes"]["diff"] - 0.015) < 1e-9


def test_a_candidate_map_on_the_same_runs(tmp_path, capsys):
    """Round 14: the candidate is another map in the same files (--candidate-pixel-rule), judged per subset too."""
    image = {"all": 0.990, **{s: 0.980 for s in SUBSETS}}

    def pixel(base, **over):
        groups = {"all": {"pixel_auroc": base, "aupro": 0.97}}
        groups.update({s: {"pixel_auroc": over.get(s, base), "aupro": 0.9} for s in SUBSETS})
        return groups

    head = pixel(0.998, swap_unseen_shapes=0.80)
    fused = pixel(0.997, swap_unseen_shapes=0.82, small_unseen_spots=0.990)
    files = []
    for i in range(2):
        path = tmp_path / f"s{i}.json"
        by_group = {"prnet": head, "pz0.5": fused}
        path.write_text(json.dumps({
            "image_auroc": {"map0.5": image},
            "metrics": {name: g["all"] for name, g in by_group.items()}, "pixel_by_group": by_group}))
        files.append(str(path))
    args = ["--candidate", *files, "--reference", *files, "--gain", "0", "--rule", "map0.5",
            "--candidate-pixel-rule", "pz0.5", "--require", "pixel_auroc:swap_unseen_shapes:0.01",
            "--out", str(tmp_path / "d.json")]
    # the swaps +0.02 at pixel level, "all" −0.001: passes without the per-subset check
    assert proxy_rules.main(args) == 0
    d = json.loads((tmp_path / "d.json").read_text())
    assert abs(d["rows"]["pixel_auroc:swap_unseen_shapes"]["diff"] - 0.02) < 1e-9
    assert d["candidate_pixel_rule"] == "pz0.5" and d["pixel_rule"] == "prnet"
    capsys.readouterr()
    # ... and fails it: the small spots 0.008 below at pixel level
    assert proxy_rules.main([*args, "--pixel-subset-harm", "0.005"]) == 1
    assert "rule 2: pixel_auroc:small_unseen_spots -0.0080" in capsys.readouterr().out
    # asked for a gain it does not have
    assert proxy_rules.main([*args, "--require", "pixel_auroc:swap_unseen_shapes:0.03"]) == 1
    assert "rule 1: pixel_auroc:swap_unseen_shapes +0.0200 < +0.03" in capsys.readouterr().out
    # files scored without --pixel-groups cannot be judged per subset
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"image_auroc": {"map0.5": image}, "metrics": {"prnet": head["all"]}}))
    assert proxy_rules.main(["--candidate", str(bare), "--reference", str(bare), "--gain", "0",
                             "--require", "pixel_auroc:swap_unseen_shapes:0.01"]) == 2
    assert "--pixel-groups" in capsys.readouterr().err


def test_a_rounds_decision_adds_the_cost_rule_and_names_its_files_as_given(tmp_path, capsys):
    ref = [_write(tmp_path / "r0.json", 0.990), _write(tmp_path / "r1.json", 0.986)]
    good = [_write(tmp_path / "c0.json", 0.994), _write(tmp_path / "c1.json", 0.989)]  # passes rules 1 and 2
    for run, seconds in (("fast", (60, 90)), ("slow", (120, 150))):
        (tmp_path / run).mkdir()
        (tmp_path / run / "train_log.csv").write_text(
            "epoch,loss,seconds\n" + "".join(f"{i + 1},0.1,{s}\n" for i, s in enumerate(seconds)))
    assert proxy_rules.training_minutes([str(tmp_path / "fast"), str(tmp_path / "slow")]) == [2.5, 4.5]
    out = str(tmp_path / "decision.json")
    names = (["c0.json", "c1.json"], ["../other/r0.json", "../other/r1.json"])
    cheap = {"cand": [2.5, 2.5], "ref": [2.0, 2.0]}  # 1.25 times
    assert proxy_rules.decide_with_time([], good, ref, minutes=cheap, max_ratio=1.3, names=names, out=out) == 0
    d = json.loads((tmp_path / "decision.json").read_text())
    assert d["verdict"] == "passes" and d["rule_3_holds"] is True and d["training_minutes"] == cheap
    assert (d["candidate_files"], d["reference_files"]) == tuple(map(list, names))  # no machine path kept
    assert "1.25x, holds" in capsys.readouterr().out
    proxy_rules.decide_with_time([], good, ref, minutes=cheap, max_ratio=1.2, names=names, out=out)
    assert json.loads((tmp_path / "decision.json").read_text())["verdict"] == "fails"  # the cost alone fails it
    proxy_rules.decide_with_time([], good, ref, minutes=None, max_ratio=1.2, names=names, out=out)
    assert json.loads((tmp_path / "decision.json").read_text())["verdict"] == "open (cost rule not checked)"
    proxy_rules.decide_with_time(["--gain", "0.01"], good, ref, minutes=cheap, max_ratio=1.3, names=names, out=out)
    assert json.loads((tmp_path / "decision.json").read_text())["verdict"] == "fails"  # rule 1 fails, cost holds
    assert proxy_rules.decide_with_time([], [str(tmp_path / "missing.json")], ref[:1], minutes=None, max_ratio=1.3,
                                        names=names) == 2


def test_a_round_against_round34_reads_its_files_by_name_and_its_reference_minutes(tmp_path, capsys):
    # round 35's committed record: the same rows and verdict from its files, wherever the results folder is
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results")
    for rnd in ("round34", "round35"):
        shutil.copytree(os.path.join(results, rnd), tmp_path / "results" / rnd)
    recorded = json.loads((tmp_path / "results" / "round35" / "decision.json").read_text())
    runs = tmp_path / "runs"
    for seed, seconds in (("", 900), ("-seed1", 840), ("-seed2", 960)):
        run = runs / f"shade_add{seed}" / "magnetic_tile"
        run.mkdir(parents=True)
        (run / "train_log.csv").write_text(f"epoch,loss,seconds\n1,0.1,{seconds}\n")
    out = str(tmp_path / "d.json")
    here = str(tmp_path / "results" / "round35")
    assert proxy_rules.decide_against_round34(["--runs", str(runs), out], here, "shade_add", 1.3) == 0
    d = json.loads(open(out).read())
    assert d["rows"] == recorded["rows"] and d["verdict"] == "fails"
    reference_minutes = recorded["training_minutes"]["ratio25"]
    assert d["training_minutes"] == {"shade_add": [15.0, 14.0, 16.0], "ratio25": reference_minutes}
    assert d["reference_files"] == ["../round34/Z_mt_ratio25.json", "../round34/Z_mt_ratio25-seed1.json",
                                    "../round34/Z_mt_ratio25-seed2.json"]
    os.remove(os.path.join(here, "Z_mt_shade_add-seed2.json"))
    assert proxy_rules.decide_against_round34([], here, "shade_add", 1.3) == 2  # a missing file is refused


def test_a_round_against_round34_with_further_seeds_reads_their_reference_from_its_own_folder(tmp_path):
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results")
    for rnd in ("round34", "round35"):
        shutil.copytree(os.path.join(results, rnd), tmp_path / "results" / rnd)
    here = tmp_path / "results" / "round35"
    recorded = json.loads((here / "decision.json").read_text())
    # seed 3: the reference and the candidate are copies of seed 0's files, their runs 10 and 12 minutes
    shutil.copy(tmp_path / "results" / "round34" / "Z_mt_ratio25.json", here / "Z_mt_ratio25-seed3.json")
    shutil.copy(here / "Z_mt_shade_add.json", here / "Z_mt_shade_add-seed3.json")
    runs = tmp_path / "runs"
    for name, seconds in (("shade_add", 900), ("shade_add-seed1", 900), ("shade_add-seed2", 900),
                          ("shade_add-seed3", 720), ("ratio25-seed3", 600)):
        (runs / name / "magnetic_tile").mkdir(parents=True)
        (runs / name / "magnetic_tile" / "train_log.csv").write_text(f"epoch,loss,seconds\n1,0.1,{seconds}\n")
    out = str(tmp_path / "d.json")
    assert proxy_rules.decide_against_round34(["--runs", str(runs), out], str(here), "shade_add", 1.3,
                                              seeds=(0, 1, 2, 3), extra={"rule_0_same_trajectory": {"0": True}}) == 0
    d = json.loads(open(out).read())
    assert d["rule_0_same_trajectory"] == {"0": True}  # a round's own entries join the decision file
    row, old = d["rows"]["pixel_auroc:real_defects"], recorded["rows"]["pixel_auroc:real_defects"]
    assert row["candidate"] == old["candidate"] + old["candidate"][:1]
    assert row["reference"] == old["reference"] + old["reference"][:1]
    assert row["diff"] == pytest.approx((3 * old["diff"] + old["candidate"][0] - old["reference"][0]) / 4)
    assert d["reference_files"][3] == "Z_mt_ratio25-seed3.json"
    assert d["candidate_files"][3] == "Z_mt_shade_add-seed3.json"
    assert d["training_minutes"]["ratio25"] == recorded["training_minutes"]["ratio25"] + [10.0]
    assert d["training_minutes"]["shade_add"] == [15.0, 15.0, 15.0, 12.0]


def test_a_round_against_round34_reads_further_reference_seeds_from_another_rounds_folder(tmp_path):
    """later_seeds: the reference's seeds from 3 on are round 37's committed files, read where they are."""
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "results")
    for rnd in ("round34", "round37"):
        shutil.copytree(os.path.join(results, rnd), tmp_path / "results" / rnd)
    here = tmp_path / "results" / "round99"
    here.mkdir()
    for seed in (0, 3):  # the candidate: copies of the reference, so every difference is zero
        suffix = proxy_rules.seed_suffix(seed)
        src = tmp_path / "results" / ("round34" if seed == 0 else "round37") / f"Z_mt_ratio25{suffix}.json"
        shutil.copy(src, here / f"Z_mt_same{suffix}.json")
    out = str(tmp_path / "d.json")
    assert proxy_rules.decide_against_round34([out], str(here), "same", 1.1, seeds=(0, 3), later_seeds="round37") == 0
    d = json.loads(open(out).read())
    assert d["reference_files"] == ["../round34/Z_mt_ratio25.json", "../round37/Z_mt_ratio25-seed3.json"]
    row = d["rows"]["pixel_auroc:real_defects"]
    assert row["candidate"] == row["reference"] and row["diff"] == 0 and len(row["reference"]) == 2
    assert d["by_type"]["break"] == {"diff": [0.0, 0.0], "mean": 0.0} and d["by_type"]["without_break"] == [0.0, 0.0]
    assert proxy_rules.decide_against_round34([out], str(here), "same", 1.1, seeds=(0, 3)) == 2  # not in its own
    # seeds from several folders: 3 in round 37's, 6 in by_type's; the per-type differences name the real images
    shutil.copytree(os.path.join(results, "by_type"), tmp_path / "results" / "by_type")
    shutil.copy(tmp_path / "results" / "round34" / "Z_mt_ratio25-seed1.json", here / "Z_mt_same-seed6.json")
    folders = {3: "round37", 6: "by_type"}
    assert proxy_rules.decide_against_round34([out], str(here), "same", 1.1, seeds=(0, 3, 6), later_seeds=folders) == 0
    d = json.loads(open(out).read())
    assert d["reference_files"][2] == "../by_type/Z_mt_ratio25-seed6.json"
    seed1 = proxy_rules.figures(str(here / "Z_mt_same-seed6.json"), "zsum0.25k25", (), "pq99",
                                proxy_rules.REAL_TYPES)
    seed6 = proxy_rules.figures(d["reference_files"][2].replace("..", str(tmp_path / "results")), "zsum0.25k25", (),
                                "pq99", proxy_rules.REAL_TYPES)
    assert d["by_type"]["break"]["diff"][:2] == [0.0, 0.0]
    assert d["by_type"]["break"]["diff"][2] == pytest.approx(seed1["pixel_auroc:break"] - seed6["pixel_auroc:break"])


def test_same_trajectory_compares_the_epoch_fingerprints_where_the_reference_run_is_there(tmp_path):
    def run(name, fingerprints):
        folder = tmp_path / name / "magnetic_tile"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps({"epoch_fingerprints": fingerprints}))

    same = [{"epoch": 1, "batches_sha1": "a", "weights_sha256": "b"}]
    run("cand", same), run("ref", same)
    run("cand-seed1", same), run("ref-seed1", [{**same[0], "weights_sha256": "c"}])
    run("cand-seed2", same)
    assert proxy_rules.same_trajectory(str(tmp_path), "cand", "ref", [0, 1, 2]) == {"0": True, "1": False, "2": None}
    with pytest.raises(FileNotFoundError, match="cand-seed3"):
        proxy_rules.same_trajectory(str(tmp_path), "cand", "ref", [3])


def test_seeds_option_takes_the_seeds_out_of_a_decide_scripts_arguments():
    from proxy_rules import seeds_option

    assert seeds_option(["--runs", "r", "out.json"], (0, 1, 2)) == (["--runs", "r", "out.json"], (0, 1, 2))
    got = seeds_option(["--seeds", "0,3", "--runs", "r", "out.json"], range(6))
    assert got == (["--runs", "r", "out.json"], (0, 3))
    assert seeds_option(["out.json", "--seeds", "2"], (0,)) == (["out.json"], (2,))
    for bad in (["--seeds"], ["--seeds", "0,x"]):
        with pytest.raises(SystemExit, match="--seeds"):
            seeds_option(bad, (0,))


def test_runs_option_takes_the_runs_folder_out_of_a_decide_scripts_arguments():
    from proxy_rules import runs_option

    assert runs_option(["out.json"]) == (["out.json"], None)
    assert runs_option(["--seeds", "0", "--runs", "pv/runs", "out.json"]) == (["--seeds", "0", "out.json"], "pv/runs")
    with pytest.raises(SystemExit, match="--runs"):
        runs_option(["out.json", "--runs"])
