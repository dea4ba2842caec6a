"""Loads a journal written by `coordinator export optuna` with Optuna itself (from PyPI) and
compares its study with what the test expects: per trial number its state, params, value and
intermediate values.

usage: check_optuna_journal.py JOURNAL EXPECTED_JSON
EXPECTED_JSON: {"study": NAME, "direction": "MINIMIZE", "trials": [{"state": "COMPLETE",
"params": {...}, "value": x or null, "intermediate": {"step": value}}, ...]}
Exits non-zero (with the reason) on the first difference.
"""

import json
import math
import sys

import optuna
from optuna.storages import JournalStorage

try:
    from optuna.storages.journal import JournalFileBackend as Backend
except ImportError:  # Optuna 3.x
    from optuna.storages import JournalFileStorage as Backend


def main():
    journal, expected_path = sys.argv[1], sys.argv[2]
    with open(expected_path) as f:
        want = json.load(f)
    storage = JournalStorage(Backend(journal))
    study = optuna.load_study(study_name=want["study"], storage=storage)
    if study.direction.name != want["direction"]:
        sys.exit(f"direction {study.direction.name}, expected {want['direction']}")
    trials = study.get_trials(deepcopy=False)
    if len(trials) != len(want["trials"]):
        sys.exit(f"{len(trials)} trials, expected {len(want['trials'])}")
    for t, w in zip(trials, want["trials"]):
        if t.state.name != w["state"]:
            sys.exit(f"trial {t.number}: state {t.state.name}, expected {w['state']}")
        if t.params != w["params"]:
            sys.exit(f"trial {t.number}: params {t.params}, expected {w['params']}")
        if (t.value is None) != (w["value"] is None) or (t.value is not None and not math.isclose(t.value, w["value"], rel_tol=1e-12)):
            sys.exit(f"trial {t.number}: value {t.value}, expected {w['value']}")
        got = {str(k): v for k, v in t.intermediate_values.items()}
        if got.keys() != w["intermediate"].keys() or any(not math.isclose(got[k], w["intermediate"][k], rel_tol=1e-12) for k in got):
            sys.exit(f"trial {t.number}: intermediate values {got}, expected {w['intermediate']}")
        # Optuna's own consistency checks (datetimes set for finished trials, params match
        # their distributions, no value for a failed trial).
        t._validate()
    print(f"optuna {optuna.__version__}: {len(trials)} trials as expected")


if __name__ == "__main__":
    main()
