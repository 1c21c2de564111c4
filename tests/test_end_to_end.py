"""End to end on a tiny demo corpus: every stage in process, then `image2song demo` under a real
Airflow scheduler (LocalExecutor), which enforces Airflow 3's task isolation as `dag.test()` does not."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from image2song.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.slow
TINY_POSTS = 400


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_env(home) -> dict[str, str]:
    return {"IMAGE2SONG_HOME": str(home), "IMAGE2SONG_SITE_URL": f"http://127.0.0.1:{free_port()}",
            "IMAGE2SONG_LYRICS_URL": f"http://127.0.0.1:{free_port()}",
            "IMAGE2SONG_AIRFLOW_PORT": str(free_port())}


def test_every_stage_in_process(tmp_path):
    from image2song import stages
    from image2song.demo.run import demo_world, ensure_corpus

    settings = Settings.from_env(tiny_env(tmp_path))
    ensure_corpus(settings, TINY_POSTS)
    truth = json.loads((settings.demo_corpus / "truth.json").read_text())
    visible = sum(1 for line in open(settings.demo_corpus / "posts.jsonl") if not json.loads(line)["hidden"])
    with demo_world(settings):
        stages.migrate(settings)
        crawled = stages.crawl(settings)
        assert crawled["new_posts"] == visible
        assert crawled["crawl_state"]["post:disallowed"] == TINY_POSTS - visible  # robots.txt obeyed
        images = stages.fetch_images(settings)
        assert (images["stored"], images["failed"], images["rejected"]) == (visible, 0, 0)
        lyrics = stages.fetch_lyrics(settings)
        assert lyrics["errors"] == 0 and lyrics["not_found"] > 0
        verdicts = stages.filter_lyrics(settings)
        assert verdicts["approved"] > 0 and verdicts["rejected:non-English"] > 0
        stages.enqueue_review(settings)
        snapshot = stages.build_snapshot(settings, test_songs=8)
        assert snapshot["published"] and snapshot["counts"]["split_a_test_songs"] == 8
        # A second refresh finds nothing new, and the unchanged snapshot is not published again.
        assert stages.crawl(settings)["new_posts"] == 0
        assert stages.fetch_images(settings)["attempted"] == 0
        assert stages.fetch_lyrics(settings)["songs"] == 0
        assert stages.build_snapshot(settings, test_songs=8)["published"] is False
    non_english = {s for s, t in truth["songs"].items() if t["kind"] == "non_english"}
    assert non_english, "the tiny corpus should hold non-English songs"

    tags = stages.extract_tags(settings, snapshot["path"])
    results = []
    for split in ("a", "b"):
        model = stages.train(settings, snapshot["path"], tags["tags_paths"], split=split, vocabulary="imagenet",
                             params={"epochs": 2, "tag_vocabularies": ["imagenet"]})
        results.append(stages.evaluate(settings, model["experiment_dir"]))
    report = stages.report(settings, results, snapshot["path"])
    text = open(report["report"]).read()
    assert "split A" in text and "split B" in text and "*chance*" in text and "lyric-free control" in text
    assert "| A |" in report["table"] and "| B |" in report["table"]


def test_demo_runs_both_dags_under_the_airflow_scheduler(tmp_path):
    env = {**os.environ, **tiny_env(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "image2song", "demo", "--posts", str(TINY_POSTS), "--test-songs", "8"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "refresh.build_snapshot: success" in output
    assert "train.report: success" in output
    assert "| A |" in output and "| B |" in output
    assert "lyrics wait for a curator" in output
    # The train run came from the snapshot Asset, not from a manual trigger.
    assert "waiting for the train run its Asset triggers" in output
    # Airflow was stopped: nothing answers on its port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(env["IMAGE2SONG_AIRFLOW_PORT"])), timeout=2).close()
