"""The benchmark script runs and reports the three ratios and the multi-adapter serving tables (its
numbers are not asserted: speed is measured by `make bench`, not by timed tests)."""

from __future__ import annotations

from tools import bench


def test_bench_reports_every_case(capsys):
    bench.main(["--rounds", "1", "--adapters", "1,2"])
    printed = capsys.readouterr().out
    for line in (
        "Linear 768->768, train step",
        "lora_basics.Linear r=8",
        "lora_basics.Linear, formula (unfused)",
        "MergedLinear 768->2304 [T,F,T], train step",
        "lora_basics.MergedLinear",
        "lora_basics.MergedLinear, formula",
        "Linear 768->768, eval forward",
        "lora_basics.Linear r=8, merged",
        "Multi-adapter serving, GPT-2-small block",
        "Multi-adapter serving, tiny GPT of lesson 09",
        "one merged model, whole batch",
        "(a) merged copies",
        "(b) merge/unmerge swap",
        "(c) mixed batch",
        "PEFT mixed batch",
        "Linear 768->768 variants, train step",
        "lora_basics.Linear r=8, DoRA",
        "lora_basics.QLoRALinear r=8, NF4",
        "lora_basics.QLoRALinear r=8, NF4+DQ",
    ):
        assert line in printed
    assert printed.count("1.00x") >= 6  # each group's baseline
    serving_rows = [line.split() for line in printed.splitlines() if "mixed batch" in line or "merged copies" in line]
    assert sorted({int(row[0]) for row in serving_rows}) == [1, 2]  # one row per adapter count asked for
