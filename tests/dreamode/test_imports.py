"""``import dreamode`` loads the model only; training, baselines, data sets and physics load on use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import dreamode

ROOT = Path(__file__).resolve().parents[2]
# modules `import dreamode` must leave alone (scipy comes in through the solvers package, not here)
DEFERRED = (
    "dreamode.baselines",
    "dreamode.classify",
    "dreamode.compare",
    "dreamode.data",
    "dreamode.datasets",
    "dreamode.fit",
    "dreamode.physics",
    "matplotlib",
    "pandas",
)
LAZY = {
    "GRUD": "dreamode.baselines",
    "GRUDelta": "dreamode.baselines",
    "LSTMForwardFill": "dreamode.baselines",
    "SequenceClassifier": "dreamode.classify",
    "evaluate": "dreamode.classify",
    "train_classifier": "dreamode.classify",
}

PROBE = """
import json, sys
import dreamode
deferred = {deferred!r}
before = sorted(m for m in sys.modules if m in deferred or m.startswith(tuple(d + "." for d in deferred)))
names = {{}}
for name in {names!r}:
    value = getattr(dreamode, name)
    names[name] = getattr(value, "__module__", None) or value.__name__
print(json.dumps({{"before": before, "names": names, "dir": dir(dreamode)}}))
"""


def test_import_leaves_optional_modules_unloaded_until_used():
    names = sorted(set(dreamode.__all__) - {"__version__"})
    probe = PROBE.format(deferred=DEFERRED, names=names)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["before"] == []
    for name, module in LAZY.items():  # each lazily exposed name resolves to the object of its submodule
        assert report["names"][name] == module
    for sub in ("baselines", "classify", "data", "datasets", "physics"):
        assert report["names"][sub] == f"dreamode.{sub}"
    assert set(dreamode.__all__) <= set(report["dir"])


def test_lazy_names_are_the_submodules_objects():
    from dreamode import baselines, classify

    assert dreamode.GRUD is baselines.GRUD and dreamode.SequenceClassifier is classify.SequenceClassifier
    assert dreamode.train_classifier is classify.train_classifier and dreamode.datasets.load_dataset
    assert all(hasattr(dreamode, name) for name in dreamode.__all__)
    with pytest.raises(AttributeError, match=r"^module 'dreamode' has no attribute 'no_such_name'$"):
        dreamode.no_such_name  # noqa: B018
