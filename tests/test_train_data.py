"""Training on several generated-data folders (dtree.train --extra-data) and the code-prompt harvester
(scripts/code_prompts.py); the end-to-end test runs the real embedded target for a few tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from dtree import train as T
from dtree.errors import InputError

ROOT = Path(__file__).resolve().parent.parent


def _sample(idx: int) -> T.Sample:
    return T.Sample(idx, torch.zeros(3, dtype=torch.long), torch.zeros(2, 4), 1)


def _set(name: str, ids) -> T.DataSet:
    return T.DataSet(name, Path(name), "p.jsonl", set(), [_sample(i) for i in ids], [], set())


def test_draw_batch_share_of_extra_folders():
    main, extra = _set("main", range(10)), _set("code", range(100, 110))
    gen = torch.Generator().manual_seed(0)
    batch = T.draw_batch([main, extra], 4000, 0.3, gen)
    share = sum(s.idx >= 100 for s in batch) / len(batch)
    assert 0.27 < share < 0.33
    assert all(s.idx < 100 for s in T.draw_batch([main, extra], 200, 0.0, gen))
    assert all(s.idx >= 100 for s in T.draw_batch([main, extra], 200, 1.0, gen))
    # an empty pool falls back to the other one
    assert all(s.idx >= 100 for s in T.draw_batch([_set("main", []), extra], 50, 0.0, gen))
    assert all(s.idx < 100 for s in T.draw_batch([main, _set("code", [])], 50, 1.0, gen))


def test_extra_folder_without_source_and_bad_share_are_rejected(tmp_path):
    (tmp_path / "main").mkdir()
    (tmp_path / "code").mkdir()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "x"}) + "\n")
    cfg = T.TrainConfig(data_dir=str(tmp_path / "main"), prompts=str(prompts), extra_data=str(tmp_path / "code"))
    with pytest.raises(InputError, match="source.json"):
        T.open_datasets(cfg, [1])
    (tmp_path / "code" / "source.json").write_text(json.dumps({"prompts": str(prompts), "seed": 3, "n_heldout": 1}))
    cfg = T.TrainConfig(data_dir=str(tmp_path / "code"), prompts=str(tmp_path / "other.jsonl"),
                        extra_data=str(tmp_path / "code"))
    with pytest.raises(InputError, match="named twice"):
        T.open_datasets(cfg, [1])
    # a --data-dir with a source.json keeps the prompts (hence the held-out set) it was generated from
    (main,) = T.open_datasets(T.TrainConfig(data_dir=str(tmp_path / "code"), prompts=str(tmp_path / "other.jsonl"),
                                            n_heldout=48), [1])
    assert main.prompts == str(prompts) and main.held_idx == {0}
    for extra in (str(tmp_path / "code") + ",", f"{tmp_path / 'code'},,{tmp_path / 'main'}"):  # a stray comma
        cfg = T.TrainConfig(data_dir=str(tmp_path / "main"), prompts=str(prompts), extra_data=extra)
        with pytest.raises(InputError, match="empty item"):
            T.open_datasets(cfg, [1])
    for bad in (-0.1, 1.5, float("nan")):
        cfg = T.TrainConfig(data_dir=str(tmp_path / "main"), prompts=str(prompts), extra_share=bad)
        with pytest.raises(InputError, match="extra_share"):
            T.open_datasets(cfg, [1])


def test_bad_prompts_files_are_rejected(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        T.load_prompts(str(tmp_path / "missing.jsonl"), 3, 0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?"}\nnot json\n')
    with pytest.raises(InputError, match="line 2 is not JSON"):
        T.load_prompts(str(bad), 3, 0)
    bad.write_text('{"question": "ok?"}\n{"answer": "no prompt field"}\n')
    with pytest.raises(InputError, match="line 2 has no"):
        T.load_prompts(str(bad), 3, 0)
    bad.write_text('{"question": "ok?"}\n{"text": "   "}\n')  # a blank prompt is no prompt
    with pytest.raises(InputError, match="line 2 has no"):
        T.load_prompts(str(bad), 3, 0)


def test_prompt_files_are_read_with_the_bench_fields(tmp_path):
    """train-drafter reads a JSONL row's prompt as bench does: question, prompt, instruction, input, text, turns[0]."""
    import dtree.bench as B

    rows = [{"question": "q"}, {"prompt": "p"}, {"instruction": "i"}, {"input": "x"}, {"text": "t"},
            {"turns": ["first", "second"]}, {"question": "q2", "text": "t2"}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = dict(T.load_prompts(str(path), 100, 0))
    assert got == {i: B.prompt_of(r) for i, r in enumerate(rows)}
    assert [got[i] for i in range(len(rows))] == ["q", "p", "i", "x", "t", "first", "q2"]


def test_training_on_two_folders_end_to_end(tmp_path, capsys):
    """Generate a few answers into two folders, train 2 steps on both: each folder's held-out tau is reported and
    the draft vocabulary covers both folders' answers."""
    math_p, code_p = tmp_path / "math.jsonl", tmp_path / "code.jsonl"
    math_p.write_text("".join(json.dumps({"question": q}) + "\n" for q in
                              ["What is 2 + 3?", "Tom has 4 apples and eats 1. How many are left?", "What is 6 * 7?"]))
    code_p.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in
                              ['def add(a, b):\n    """ Return a + b.\n    """\n',
                               'def is_even(n):\n    """ Return True if n is even.\n    """\n',
                               'def first(xs):\n    """ Return the first item of xs.\n    """\n']))
    common = dict(n_prompts=3, n_heldout=1, max_new_tokens=10, gen_batch=3, threads=2, num_layers=1)
    T.generate(T.TrainConfig(prompts=str(math_p), data_dir=str(tmp_path / "math"), **common))
    T.generate(T.TrainConfig(prompts=str(code_p), data_dir=str(tmp_path / "code"), soft_topk=0, **common))
    # the target's top-k per answer token is stored beside the features (default 8), or not at all (--soft-topk 0)
    for folder, has in (("math", True), ("code", False)):
        shard = next((tmp_path / folder).glob("features_*/*.pt"))
        blob = torch.load(shard)
        assert ("top_ids" in blob) == has
        if has:
            rows = {r["idx"]: r for r in T.read_responses(tmp_path / folder).values()}
            for i, top in zip(blob["idx"], blob["top_ids"]):
                assert top.shape == (len(rows[i]["response_ids"]), 8)
                assert top[:, 0].tolist() == rows[i]["response_ids"]
    src = json.loads((tmp_path / "code" / "source.json").read_text())
    assert src["prompts"] == str(code_p.resolve()) and src["n_heldout"] == 1
    # continuing a folder with another prompts file would mix answers keyed by line number: refused, nothing changed
    n_rows = len(T.read_responses(tmp_path / "code"))
    with pytest.raises(InputError, match="was generated from --prompts"):
        T.generate(T.TrainConfig(prompts=str(math_p), data_dir=str(tmp_path / "code"), **common))
    assert json.loads((tmp_path / "code" / "source.json").read_text()) == src
    assert len(T.read_responses(tmp_path / "code")) == n_rows
    cfg = T.TrainConfig(prompts=str(math_p), data_dir=str(tmp_path / "math"), extra_data=str(tmp_path / "code"),
                        extra_share=0.5, steps=2, batch_seqs=2, anchors_per_seq=2, eval_every=1000, warmup=1,
                        out=str(tmp_path / "ck"), draft_vocab="responses", soft_weight=0.5, **common)
    res = T.train(cfg)
    assert res["step"] == 2 and set(res["tau_per_set"]) == {"math", "code"}
    assert all(t >= 1.0 for t in res["tau_per_set"].values())
    meta = json.loads((tmp_path / "ck" / "best_checkpoint.json").read_text())
    assert meta["train_sequences"] == {"math": 2, "code": 2} and meta["heldout_prompts"] == {"math": 1, "code": 1}
    # it lies beside the checkpoint it describes (two trainings sharing a data folder keep their own), and its config
    # names the main folder's prompts as source.json recorded them
    assert not (tmp_path / "math" / "best_checkpoint.json").exists()
    assert meta["config"]["prompts"] == str(math_p.resolve()) and meta["config"]["n_heldout"] == 1
    # generation settings come from each folder's own record, not from this command's unused defaults
    assert "max_new_tokens" not in meta["config"] and "n_prompts" not in meta["config"]
    for folder, topk in (("math", 8), ("code", 0)):
        (run,) = meta["sources"][folder]["gen_runs"]
        assert (run["max_new_tokens"], run["n_prompts"], run["gen_batch"], run["soft_topk"]) == (10, 3, 3, topk)
    vocab = set(torch.load(tmp_path / "math" / "state.pt", weights_only=False)["draft_vocab"].tolist())
    for folder, prompts in (("math", math_p), ("code", code_p)):
        held = {i for i, _ in T.load_prompts(str(prompts), 1, 0)}
        rows = T.read_responses(tmp_path / folder).values()
        assert all(set(r["response_ids"]) <= vocab for r in rows if r["idx"] not in held)  # training answers only
    # resuming the state on the main folder alone: the saved best (a mean over two folders) is not comparable, so the
    # math-only evaluation is saved as the new best
    meta["heldout_tau"] = 99.0
    (tmp_path / "ck" / "best_checkpoint.json").write_text(json.dumps(meta))
    state = torch.load(tmp_path / "math" / "state.pt", weights_only=False)
    state["best_tau"] = 99.0
    torch.save(state, tmp_path / "math" / "state.pt")
    res = T.train(T.TrainConfig(**{**cfg.__dict__, "extra_data": "", "steps": 3}))
    meta = json.loads((tmp_path / "ck" / "best_checkpoint.json").read_text())
    assert res["step"] == 3 and set(meta["heldout_tau_per_set"]) == {"math"} and meta["heldout_tau"] < 99.0
    # a resumed run whose evaluations do not beat the state's best writes no checkpoint to a new --out: said
    state = torch.load(tmp_path / "math" / "state.pt", weights_only=False)
    state["best_tau"], state["best_per_set"] = 99.0, {"math": 99.0}
    torch.save(state, tmp_path / "math" / "state.pt")
    capsys.readouterr()
    T.train(T.TrainConfig(**{**cfg.__dict__, "extra_data": "", "steps": 4, "out": str(tmp_path / "ck2")}))
    assert "no checkpoint written to" in capsys.readouterr().out and not (tmp_path / "ck2" / "model.safetensors").exists()
    # --phase train reads the prompts from the folder's source.json: another --prompts is refused, not ignored
    with pytest.raises(InputError, match="drop --prompts") as ei:
        T.check_paths(T.TrainConfig(**{**cfg.__dict__, "phase": "train", "prompts": str(code_p), "extra_data": ""}))
    assert ei.value.field == "prompts"


def test_gen_skip_answers_the_held_out_prompts_and_the_ones_after_the_skipped(tmp_path):
    """--gen-skip K: the held-out prompts are answered, the next K of the shuffled order are not, then n_prompts
    minus the held-out ones; a negative K is refused before the model loads."""
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(6)))
    common = dict(prompts=str(p), data_dir=str(tmp_path / "d"), n_heldout=1, max_new_tokens=2, gen_batch=4,
                  threads=2)
    with pytest.raises(InputError, match="gen_skip"):
        T.generate(T.TrainConfig(n_prompts=2, gen_skip=-1, **common))
    T.generate(T.TrainConfig(n_prompts=3, gen_skip=2, **common))
    order = [i for i, _ in T.load_prompts(str(p), 6, 0)]
    assert set(T.read_responses(tmp_path / "d")) == {order[0], order[3], order[4]}



def test_finished_gen_says_so_without_loading_the_model(tmp_path, monkeypatch, capsys):
    """Re-running a finished --phase gen counts what is left from the stored answers and the target's config alone:
    nothing left -> it says so and never loads the model; a larger --n-prompts answers the new prompts only."""
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps({"question": f"What is {i} + {i}?"}) + "\n" for i in range(5)))
    common = dict(prompts=str(p), data_dir=str(tmp_path / "d"), n_heldout=1, max_new_tokens=2, gen_batch=4,
                  threads=2)
    assert T.prompts_left(T.TrainConfig(n_prompts=2, **common)) == 2  # nothing answered yet
    T.generate(T.TrainConfig(n_prompts=2, **common))
    assert T.prompts_left(T.TrainConfig(n_prompts=2, **common)) == 0
    assert T.prompts_left(T.TrainConfig(n_prompts=4, **common)) == 2
    import dtree.models

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as m:
        m.setattr(dtree.models, "load_target", no_load)
        capsys.readouterr()
        T.generate(T.TrainConfig(n_prompts=2, **common))
        assert "already answered" in capsys.readouterr().out
    T.generate(T.TrainConfig(n_prompts=4, **common))
    assert len(T.read_responses(tmp_path / "d")) == 4 and T.prompts_left(T.TrainConfig(n_prompts=4, **common)) == 0
    capsys.readouterr()
    T.generate(T.TrainConfig(n_prompts=9, **common))  # more than the file holds: all 5 answered, and said
    assert "holds 5 prompts, fewer than --n-prompts 9: answering the 5 there are" in capsys.readouterr().out
    assert len(T.read_responses(tmp_path / "d")) == 5
    # source.json keeps one record per generation run that answered something (the no-op one wrote none)
    runs = json.loads((tmp_path / "d" / "source.json").read_text())["gen_runs"]
    assert [r["n_prompts"] for r in runs] == [2, 4, 9] and runs[0]["target"] == "embedded"


def _harvester():
    spec = importlib.util.spec_from_file_location("code_prompts", ROOT / "scripts" / "code_prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_code_prompt_harvester(tmp_path):
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "m.py").write_text(
        'from typing import List\n\n'
        'def mean(xs: List[float]) -> float:\n    """Return the arithmetic mean of a non-empty list of numbers.\n\n'
        '    Raises ValueError for an empty list.\n    """\n    return sum(xs) / len(xs)\n\n'
        'def _private(x):\n    """A private helper that is long enough to count as documented."""\n\n'
        'def undocumented(x):\n    return x\n\n'
        'def short(x):\n    """Too short."""\n')
    (src / "tests").mkdir()
    (src / "tests" / "t.py").write_text('def in_tests(x):\n    """A function in a test folder, never harvested."""\n')
    out = tmp_path / "out.jsonl"
    h = _harvester()
    assert h.main(["--out", str(out), "--roots", str(src)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == ["m:mean"]
    p = rows[0]["prompt"]
    assert p.startswith("from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n")
    assert "Raises ValueError" in p and "return sum" not in p  # header + docstring, no body
    assert h.main(["--out", str(out), "--roots", str(tmp_path / "missing")]) == 2
    (src / "n.py").write_text('def middle_value(xs):\n    """Return the middle value of a sorted non-empty list of numbers."""\n')
    seen = tmp_path / "seen.jsonl"
    seen.write_text(out.read_text())
    out2 = tmp_path / "out2.jsonl"
    assert h.main(["--out", str(out2), "--roots", str(src), "--exclude", str(seen)]) == 0
    assert [json.loads(line)["source"] for line in out2.read_text().splitlines()] == ["n:middle_value"]
    assert h.main(["--out", str(out2), "--roots", str(src), "--exclude", str(tmp_path / "none.jsonl")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "u.py").write_text("def undocumented(x):\n    return x\n")
    assert h.main(["--out", str(out), "--roots", str(empty)]) == 2  # nothing harvestable


def test_chat_prompt_templates(tmp_path):
    """Template chat prompts: unique, filled (no placeholder left), none equal to an MT-Bench turn, a seeded order
    that --limit cuts and another seed reorders; readable by the generator."""
    spec = importlib.util.spec_from_file_location("chat_prompts", ROOT / "scripts" / "chat_prompts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "chat.jsonl"
    assert mod.main(["--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    texts = [r["prompt"] for r in rows]
    assert len(texts) == len(set(texts)) > 500 and not any("{" in t for t in texts)
    assert not set(texts) & mod.mt_bench_turns()
    assert mod.main(["--out", str(out), "--limit", "7"]) == 0
    assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == texts[:7]
    other = [r["prompt"] for r in mod.build(seed=1)]
    assert other != texts and sorted(other) == sorted(texts)
    assert len(T.load_prompts(str(out), 10, 0)) == 7
    with pytest.raises(SystemExit):
        mod.main(["--out", str(out), "--limit", "-1"])


def test_batch_by_length_keeps_held_out_first_and_sorts_within_windows():
    todo = [(i, "x" * n) for i, n in enumerate([9, 1, 7, 3, 8, 2, 6, 4, 5, 10])]
    out = T.batch_by_length(todo, encode=lambda q: list(q), first={2, 0}, batch=2, window=2)
    assert sorted(out) == sorted(todo)  # the same pairs
    assert [i for i, _ in out[:2]] == [0, 2]  # held out: in front, in their order
    rest = [len(q) for _, q in out[2:]]
    assert rest == [1, 2, 3, 8, 4, 5, 6, 10]  # windows of 4 (lengths 1,3,8,2 | 6,4,5,10), each sorted


def test_best_checkpoint_compares_the_folders_both_evaluations_have():
    best = {"drafter": 2.24, "code": 1.98}
    # code2's held-out answers appeared since the best: its low tau must not hide a gain on the other two ...
    assert T.improves(best, {"drafter": 2.25, "code": 2.01, "code2": 1.50})
    # ... nor its high tau hide a loss
    assert not T.improves(best, {"drafter": 2.20, "code": 1.95, "code2": 3.00})
    assert not T.improves(best, {"drafter": 2.24, "code": 1.98})  # equal is not better
    assert T.improves(best, {"other": 1.0})  # nothing in common: a new start
    assert T.improves({}, {"drafter": 1.0})  # no best yet
    assert not T.improves(best, {})
    # a state saved before per-folder bests: the mean against the stored mean
    assert T.improves({}, {"drafter": 2.2, "code": 2.0}, best_mean=2.05)
    assert not T.improves({}, {"drafter": 2.2, "code": 1.8}, best_mean=2.05)


def test_target_layer_ids_are_checked_against_the_target():
    cfg = T.TrainConfig(target_layer_ids=" 1, 8 ,29")
    assert T.layer_ids_for(cfg, 30) == [1, 8, 29]
    with pytest.raises(InputError, match="layer 30 does not exist: the target has 30 layers"):
        T.layer_ids_for(T.TrainConfig(target_layer_ids="1,30"), 30)
    assert T.layer_ids_for(T.TrainConfig(), 30) == T.layer_ids_for(T.TrainConfig(target_layer_ids=""), 30)


def test_question_tokens_reads_every_prompt_field_generation_accepts(tmp_path):
    """The draft vocabulary's question tokens come from rows read as --phase gen reads them ("text", "instruction",
    "turns", ...): a folder generated from such a file trains (it crashed on rows without question/prompt)."""
    p = tmp_path / "q.jsonl"
    rows = [{"text": "alpha beta"}, {"instruction": "alpha gamma"}, {"turns": ["alpha delta", "ignored"]},
            {"question": "beta alpha"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    vocab = {}

    def tok(text, add_special_tokens=False):
        return {"input_ids": [vocab.setdefault(w, len(vocab)) for w in text.split()]}

    got = T.question_tokens(tok, str(p), exclude=set(), min_count=2)
    assert got == {vocab["alpha"], vocab["beta"]}
    assert "ignored" not in vocab  # only the first turn is a prompt
    assert T.question_tokens(tok, str(p), exclude={0, 3}, min_count=2) == {vocab["alpha"]}  # lines 0 and 3 skipped


def test_a_saved_state_of_another_shape_is_refused_before_the_model_loads(tmp_path):
    """--num-layers 2 on a folder whose state.pt holds a 1-layer drafter: refused naming the option (it used to start
    afresh silently and overwrite the state; --intermediate-size crashed with a raw size mismatch). The same shape,
    a new --state, or growing that state are accepted; a damaged state file is named."""
    from dataclasses import asdict

    d = tmp_path / "d"
    d.mkdir()
    (d / "responses.jsonl").write_text("")
    state = d / "state.pt"
    torch.save({"cfg": asdict(T.TrainConfig(num_layers=1, intermediate_size=256))}, state)
    common = dict(phase="train", data_dir=str(d), out=str(tmp_path / "ck"))
    for override, field in (({"num_layers": 2, "intermediate_size": 256}, "num_layers"),
                            ({"num_layers": 1}, "intermediate_size"),
                            ({"num_layers": 1, "intermediate_size": 256, "qk_norm": False}, "qk_norm")):
        with pytest.raises(InputError, match="the training state") as ei:
            T.check_paths(T.TrainConfig(**common, **override))
        assert ei.value.field == field
    before = state.read_bytes()
    T.check_paths(T.TrainConfig(**common, num_layers=1, intermediate_size=256))  # the same shape resumes
    T.check_paths(T.TrainConfig(**common, num_layers=2, state=str(tmp_path / "new.pt")))  # a new state
    T.check_paths(T.TrainConfig(**common, num_layers=2, grow_from=str(state)))  # growing it
    assert state.read_bytes() == before
    state.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="not a readable training state") as ei:
        T.check_paths(T.TrainConfig(**common, num_layers=2))
    assert ei.value.field == "state"


def test_grow_from_accepts_a_checkpoint_folder(tmp_path, target32):
    """--grow-from names a training state or a checkpoint folder (the shipped drafter, to train it on new data): the
    folder's weights and draft vocabulary come back as saved; a folder without config.json is refused up front."""
    from dtree.drafter import default_drafter_path, load_drafter

    src = T.grow_source(str(default_drafter_path()), target32)
    ref = load_drafter(default_drafter_path(), target32, dtype=torch.float32)
    assert set(src["model"]) == set(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(src["model"][k], v), k
    assert torch.equal(src["draft_vocab"], ref.draft_vocab)
    d = tmp_path / "d"
    d.mkdir()
    (d / "responses.jsonl").write_text("")
    (d / "source.json").write_text(json.dumps({"prompts": str(tmp_path / "q.jsonl"), "seed": 0, "n_heldout": 1}))
    T.check_paths(T.TrainConfig(phase="train", data_dir=str(d), grow_from=str(default_drafter_path())))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="nor a drafter checkpoint folder") as ei:
        T.check_paths(T.TrainConfig(phase="train", data_dir=str(d), grow_from=str(tmp_path / "empty")))
    assert ei.value.field == "grow_from"
