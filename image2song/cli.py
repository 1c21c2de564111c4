"""The `image2song` command: one subcommand per stage, plus the demo, the catalog and Airflow."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from image2song import __version__, stages
from image2song.settings import Settings

EPILOG = """Settings come from IMAGE2SONG_* environment variables (see `image2song/settings.py`);
the defaults run everything on this machine: SQLite catalog and Airflow under ./state, the demo world
on loopback. Start with `image2song demo`."""


def _show(result) -> None:
    print(json.dumps(result, indent=2, default=str))


def cmd_demo(args, settings: Settings) -> int:
    from image2song.demo.run import run_demo, serve_demo

    if args.serve:
        return serve_demo(settings, n_posts=args.posts, scale=args.scale)
    return run_demo(settings, n_posts=args.posts, scale=args.scale, test_songs=args.test_songs, fresh=args.fresh)


def cmd_crawl(args, settings: Settings) -> int:
    shard = {"shard": args.shard, "shards": args.shards}
    if args.what in ("posts", "all"):
        _show({"posts": stages.crawl(settings, max_pages=args.max_pages, max_depth=args.max_depth,
                                     workers=args.workers,
                                     source=args.source, discover=not args.no_discover, **shard)})
    if args.what in ("images", "all"):
        _show({"images": stages.fetch_images(settings, workers=args.image_workers, processes=args.processes,
                                             resize=args.resize, near_duplicate_bits=args.near_dup_bits, **shard)})
    return 0


def cmd_lyrics(args, settings: Settings) -> int:
    if args.action in ("fetch", "all"):
        _show({"fetch": stages.fetch_lyrics(settings)})
    if args.action in ("filter", "all"):
        _show({"filter": stages.filter_lyrics(settings), "review": stages.enqueue_review(settings)})
    return 0


def cmd_review(args, settings: Settings) -> int:
    from curation.review import queue as review_queue

    stages.migrate(settings)  # a fresh state folder: curators are added before any other stage ran
    if args.action == "list":
        items = review_queue.pending_items(settings.db_url, limit=args.limit)
        for item in items:
            print(f"#{item['item']:<6} {item['title']} — {item['artist']}\n        why: {item['reason']}\n"
                  f"        lyric: {item['text'][:100]!r}")
        print(f"{len(items)} shown. Decide with: image2song review decide ITEM "
              f"{{{','.join(review_queue.DECISIONS)}}}")
    elif args.action == "decide":
        if args.item is None or args.decision is None:
            raise ValueError("usage: image2song review decide ITEM DECISION [--text …]")
        text = sys.stdin.read() if args.decision == "edit" and args.text == "-" else args.text
        _show(review_queue.decide(settings.db_url, int(args.item), args.decision, args.curator, text, args.comment))
    elif args.action in ("add-curator", "disable-curator", "curators", "end-sessions"):
        from curation.review import users

        if args.action == "curators":
            for user in users.list_curators(settings.db_url):
                print(f"{user['name']:<24} {user['role']:<8} {'active' if user['active'] else 'disabled'}")
        elif args.action == "disable-curator":
            users.set_active(settings.db_url, _curator_name(args), False)
            print(f"disabled {args.item}: their sessions ended and their claimed items went back to the queue")
        elif args.action == "end-sessions":
            from curation.review import sessions

            ended = sessions.end_all(settings.db_url, _curator_name(args))
            print(f"ended {ended} session(s) of {args.item} (a running server notices within seconds)")
        else:
            import getpass

            name = _curator_name(args)
            if args.password_stdin:
                password = sys.stdin.readline().rstrip("\n")
            else:
                password = getpass.getpass(f"password for {name}: ")
                if getpass.getpass("again: ") != password:
                    raise ValueError("the passwords differ")
            _show(users.add_curator(settings.db_url, name, password, args.role, replace=args.replace))
    elif args.action == "serve":
        from curation.review.app import ReviewConfig, serve

        on_rebuild = None
        if args.airflow_url:
            from image2song.airflow_env import AirflowApi

            api = AirflowApi(args.airflow_url)
            on_rebuild = lambda: api.trigger("refresh", {})  # noqa: E731
        secret = None
        if args.secret_file:
            secret = open(args.secret_file, encoding="utf-8").read().strip()
        from curation.review.security import parse_networks

        proxies = args.trusted_proxy if args.trusted_proxy is not None else settings.review_trusted_proxies
        parse_networks(proxies)  # a typo fails here, before the server starts
        config = ReviewConfig(db_url=settings.db_url, object_store=settings.object_store, secret_key=secret,
                              lease_seconds=args.lease_seconds, secure_cookies=args.secure_cookies,
                              on_rebuild=on_rebuild, rebuild_every=args.rebuild_every, trusted_proxies=proxies)
        print(f"review app on http://{args.host}:{args.port}/ (add accounts with `image2song review add-curator`)")
        serve(config, host=args.host, port=args.port)
    return 0


def _curator_name(args) -> str:
    if not args.item:
        raise ValueError(f"usage: image2song review {args.action} NAME")
    return args.item


def cmd_snapshot(args, settings: Settings) -> int:
    from curation.snapshots import build as snapshots

    try:
        if args.action == "build":
            _show(stages.build_snapshot(settings, test_songs=args.test_songs, min_posts=args.min_posts,
                                        posts_per_song=args.posts_per_song, test_images_per_song=args.test_images,
                                        near_duplicate_bits=None if args.near_duplicate_bits < 0
                                        else args.near_duplicate_bits, seed=args.seed))
        elif args.action == "list":
            found = snapshots.list_snapshots(settings.db_url, settings.snapshots)
            if not found:
                print("no snapshot yet: run `image2song snapshot build`")
            for snap in found:
                c = snap["counts"]
                print(f"{snap['version']}  {c.get('triplets', 0):>8,} triplets  {c.get('songs', 0):>7,} songs  "
                      f"A test {c.get('split_a_test', 0):>6,}  B test {c.get('split_b_test', 0):>6,}  {snap['path']}")
        elif args.action == "show":
            path = stages.resolve_snapshot(settings, args.version)
            if args.json:
                from curation.snapshots.reader import read_manifest

                _show(read_manifest(path))
            else:
                _show(snapshots.show_snapshot(path))
        elif args.action == "diff":
            if not args.version or not args.other:
                print("image2song: snapshot diff needs two snapshots: diff A B", file=sys.stderr)
                return 2
            diff = snapshots.diff_snapshots(stages.resolve_snapshot(settings, args.version),
                                            stages.resolve_snapshot(settings, args.other))
            if args.json:
                _show(diff)
                return 0
            print(f"{diff['old']} -> {diff['new']}")
            print(f"{'split':<14}{'old':>9}{'new':>9}{'added':>9}{'removed':>9}{'changed':>9}")
            for name, row in diff["splits"].items():
                print(f"{name:<14}{row['old']:>9,}{row['new']:>9,}{row['added']:>9,}{row['removed']:>9,}"
                      f"{row['changed']:>9,}")
            s = diff["songs"]
            print(f"songs: {s['old']:,} -> {s['new']:,}, gained {s['gained']:,}, lost {s['lost']:,}, "
                  f"lyric changed {s['lyric_changed']:,}, modeling text changed {s['modeling_text_changed']:,}")
            lists = [("gained", s["gained_ids"], s["gained"]), ("lost", s["lost_ids"], s["lost"]),
                     ("lyric changed", s["lyric_changed_ids"], s["lyric_changed"]),
                     ("modeling text changed", s["modeling_text_changed_ids"], s["modeling_text_changed"])]
            moved = diff["moved"]
            lists += [("split A train -> test", moved["split_a"]["train_to_test_ids"], moved["split_a"]["train_to_test"]),
                      ("split A test -> train", moved["split_a"]["test_to_train_ids"], moved["split_a"]["test_to_train"]),
                      ("split B held-out images changed", moved["split_b"]["held_out_images_changed_ids"],
                       moved["split_b"]["held_out_images_changed"])]
            for label, ids, total in lists:
                if ids:
                    print(f"  {label}: {' '.join(ids)}{' …' if len(ids) < total else ''}")
        elif args.action == "verify":
            report = snapshots.verify_snapshots(settings.db_url, settings.snapshots, args.version)
            if args.json:
                _show(report)
            for entry in [] if args.json else report:
                print(f"{entry['version']}  {'ok' if entry['ok'] else 'DAMAGED'}  {entry['path']}")
                for problem in entry["problems"]:
                    print(f"  - {problem}")
            if not report:
                print("no snapshot yet: run `image2song snapshot build`")
            return 0 if all(entry["ok"] for entry in report) else 1
    except snapshots.SnapshotError as error:
        print(f"image2song: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_tags(args, settings: Settings) -> int:
    _show(stages.extract_tags(settings, stages.resolve_snapshot(settings, args.snapshot), vocabulary=args.vocabulary,
                              device=args.device, batch_size=args.batch_size, workers=args.workers,
                              retry_errors=args.retry_errors, compact=args.compact))
    return 0


def _train_args(args) -> dict:
    return {"model": args.model, "loss": args.loss, "tag_vocabularies": args.vocabulary, "word_vectors": args.word_vectors,
            "epochs": args.epochs, "bilstm_epochs": args.bilstm_epochs, "seed": args.seed, "baselines": args.baselines,
            "baselines_on": args.baselines_on}


def cmd_train(args, settings: Settings) -> int:
    """Train and evaluate the models per vocabulary and split, then write the run's report."""
    snapshot = stages.resolve_snapshot(settings, args.snapshot)
    params = _train_args(args)
    vocabularies = stages.train_params(settings, params)["tag_vocabularies"]
    tags = stages.extract_tags(settings, snapshot, vocabulary=vocabularies[0], device=args.device)
    evaluations = []
    for vocabulary in vocabularies:
        for split in args.split or ["a", "b"]:
            model = stages.train(settings, snapshot, tags["tags_paths"], split=split, vocabulary=vocabulary,
                                 params=params, device=args.device, progress=sys.stderr.isatty())
            evaluations.append(stages.evaluate(settings, model["experiment_dir"]))
    summary = stages.report(settings, evaluations, snapshot)
    print(summary["table"])
    print(f"\nreport: {summary['report']} (and .html); every run of the snapshot: {summary['snapshot_report']}")
    return 0


def cmd_evaluate(args, settings: Settings) -> int:
    """Re-evaluate the models of a run folder and rewrite its report."""
    from pathlib import Path

    run = Path(args.run)
    experiments = sorted(p.parent for p in run.glob("*/split-*/training.json"))
    if not experiments:
        raise FileNotFoundError(f"no trained experiment under {run} (expected <vocabulary>/split-<a|b>/training.json)")
    evaluations = [stages.evaluate(settings, str(e)) for e in experiments]
    snapshot = json.loads((run / "run.json").read_text())["snapshot"]
    summary = stages.report(settings, evaluations, stages.resolve_snapshot(settings, snapshot))
    print(summary["table"])
    print(f"\nreport: {summary['report']}")
    return 0


def cmd_search(args, settings: Settings) -> int:
    from modeling.search.songs import SongSearch

    if (args.image is None) == (args.song is None):
        print("image2song search: give an image file, or --song TITLE for images that fit a song", file=sys.stderr)
        return 2
    snapshot = stages.resolve_snapshot(settings, args.snapshot)
    model_dir = args.model or stages.latest_model(settings, snapshot, args.split)
    tags = stages.extract_tags(settings, snapshot, vocabulary=stages.model_vocabulary(model_dir))
    search = SongSearch(model_dir, snapshot, tags["tags_path"], kind=args.index, rebuild=args.rebuild_index)
    try:
        if args.image is not None:
            hits = search.songs_for_image(args.image, top_k=args.top)
        else:
            hits = search.images_for_song(args.song, top_k=args.top)
    except (FileNotFoundError, LookupError) as error:
        print(f"image2song search: {error}", file=sys.stderr)
        return 2
    if args.json:
        _show(hits)
        return 0
    for hit in hits:
        what = f"{hit['title']} — {hit['artist']}" if args.image is not None else f"{hit['image_path']} (post {hit['post_id']})"
        why = ", ".join(f"{tag} {share:+.3f}" for tag, share in hit["tags"])
        print(f"{hit['rank']:>3}. {hit['score']:+.3f}  {what}" + (f"   [{why}]" if why else ""))
    return 0


def cmd_db(args, settings: Settings) -> int:
    from curation.catalog import current_revision

    if args.action == "upgrade":
        _show(stages.migrate(settings))
    else:
        print(current_revision(settings.db_url) or "empty (run `image2song db upgrade`)")
    return 0


def cmd_airflow(args, settings: Settings) -> int:
    from image2song.airflow_env import airflow_command, ensure_pools

    if args.airflow_args[:1] == ["ui"]:
        from image2song.demo.run import serve_airflow_ui

        return serve_airflow_ui(settings)
    if args.airflow_args[:1] == ["cluster"]:
        return _airflow_cluster(args.airflow_args[1:], settings)
    if args.airflow_args[:1] == ["alerts"]:
        from curation.alerts import recent_alerts

        stages.migrate(settings)
        for alert in reversed(recent_alerts(settings.db_url)):
            print(f"{alert['at'][:19]}  {alert['kind']:<16} {alert['message']}")
        return 0
    if args.airflow_args[:1] in (["standalone"], ["scheduler"]):  # it will run tasks: their pools must exist
        airflow_command(settings, ["db", "migrate"], capture=True)
        ensure_pools(settings)
    return airflow_command(settings, args.airflow_args, check=False).returncode


def _airflow_cluster(argv: list[str], settings: Settings) -> int:
    import os

    from image2song.airflow_env import AirflowServices, cluster_environment, stop_on_sigterm

    parser = argparse.ArgumentParser(
        prog="image2song airflow cluster",
        description="Start Airflow's scale-out deployment on this host: api-server, scheduler, dag-processor, "
        "triggerer and N Celery workers, with Airflow's metadata on PostgreSQL and a Redis broker; restart "
        "what dies; Ctrl-C or SIGTERM stops them all. Needs AIRFLOW__DATABASE__SQL_ALCHEMY_CONN "
        "(postgresql+psycopg://…) and IMAGE2SONG_AIRFLOW_ADMIN_PASSWORD; the catalog (IMAGE2SONG_DB_URL) "
        "and the object store should be shared too (see README, Operations).")
    parser.add_argument("--workers", type=int, default=2, help="Celery workers to start here (default 2; 0: none)")
    from image2song.safeguards import GPU_QUEUE

    queues = f"{os.environ.get('AIRFLOW__OPERATORS__DEFAULT_QUEUE', 'default')},{GPU_QUEUE}"
    parser.add_argument("--queues", default=queues, help=f"queues the workers take (default {queues}; "
                        f"GPU hosts: {GPU_QUEUE})")
    parser.add_argument("--concurrency", type=int, default=1, help="task slots per worker (default 1: the solo "
                        "pool runs one task at a time; start more workers for more)")
    parser.add_argument("--broker", default=os.environ.get("AIRFLOW__CELERY__BROKER_URL", "redis://127.0.0.1:6379/0"),
                        help="Celery broker (default AIRFLOW__CELERY__BROKER_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--only-workers", action="store_true", help="start only the workers (another host runs "
                        "the rest)")
    options = parser.parse_args(argv)
    metadata = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    env = cluster_environment(settings, metadata_url=metadata, broker_url=options.broker)
    stop_on_sigterm()
    airflow_command(settings, ["db", "migrate"], capture=True, env=env)
    services = AirflowServices(settings, env=env, workers=options.workers, queues=options.queues,
                               concurrency=options.concurrency)
    if options.only_workers:
        services.commands = {n: c for n, c in services.commands.items() if n.startswith("worker-")}
    try:
        with services:
            print(f"Airflow cluster up on {services.url} ({len(services.commands)} components, logs in "
                  f"{services.log_dir}); Ctrl-C stops it", flush=True)
            services.supervise()
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image2song", description="Find songs for images: crawl image-song posts, curate lyrics, "
        "publish Parquet snapshots, tag images, train and evaluate retrieval (after Image2song, ICCV 2017).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"image2song {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_text, description=None):
        p = sub.add_parser(name, help=help_text, description=description or help_text)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "run the whole pipeline on the demo world with Airflow, end to end",
            "Build the demo corpus (real Debian texts and images), serve the demo sharing site and lyric "
            "API on loopback, run the refresh and train DAGs under a real Airflow scheduler, and print "
            "where the snapshot, model and report are, with a results table.")
    p.add_argument("--scale", choices=["demo", "research"], default="demo",
                   help="demo: 3,000 posts, about 210 songs with 5+ posts (default); research: 40,000 posts, "
                        "2,900 songs with 5+ posts from every English fortunes file and the King James "
                        "Bible's verse (needs the Debian package bible-kjv). Keep each scale in its own "
                        "state folder (IMAGE2SONG_HOME)")
    p.add_argument("--posts", type=int, help="posts in the corpus (default: the scale's, 3000 or 40000)")
    p.add_argument("--test-songs", type=int, default=100, help="split A: songs held out (default 100)")
    p.add_argument("--fresh", action="store_true", help="start from an empty state folder")
    p.add_argument("--serve", action="store_true", help="only serve the demo site and lyric API until Ctrl-C")

    p = add("crawl", cmd_crawl, "crawl posts from the sharing site and fetch their images")
    p.add_argument("what", nargs="?", choices=["posts", "images", "all"], default="all",
                   help="post pages, their images, or both (default)")
    p.add_argument("--max-pages", type=int, help="list pages to walk at most (default: 2000)")
    p.add_argument("--max-depth", type=int, help="hops from the first list page at most (default: 2000)")
    p.add_argument("--workers", type=int, default=8, help="concurrent post page fetches (default 8)")
    p.add_argument("--source", help="instead of the sharing site: feed:URL (JSON feed) or file:PATH (CSV/JSONL import)")
    p.add_argument("--shard", type=int, default=0, help="this shard's number (with --shards)")
    p.add_argument("--shards", type=int, default=1, help="cut the work into this many shards (default 1)")
    p.add_argument("--no-discover", action="store_true", help="do not walk the listing (a shard after planning)")
    p.add_argument("--image-workers", type=int, default=32, help="image downloads in flight per process (default 32)")
    p.add_argument("--processes", type=int, help="image worker processes (default: one per core for large jobs)")
    p.add_argument("--resize", type=int, help="store images resized to this longest side (default: as they are)")
    p.add_argument("--near-dup-bits", type=int, default=2,
                   help="link images whose pHash differs in at most this many bits (default 2)")

    p = add("lyrics", cmd_lyrics, "fetch lyrics for new songs, then filter them (and queue the uncertain)")
    p.add_argument("action", nargs="?", choices=["fetch", "filter", "all"], default="all",
                   help="fetch from the lyric API, filter (and queue the uncertain), or both (default)")

    p = add("review", cmd_review, "work the review queue: the web app for curators, or the terminal",
            "`serve` starts the curators' web app on 127.0.0.1; `add-curator NAME` creates an account "
            "(`--role admin` for progress, agreement, audit log, export and snapshot rebuilds); `list` and "
            "`decide` work the queue from the terminal.")
    p.add_argument("action", choices=["list", "decide", "serve", "add-curator", "disable-curator", "curators",
                                      "end-sessions"])
    p.add_argument("item", nargs="?", help="review item (decide) or curator name (add-curator, disable-curator, "
                   "end-sessions: log that curator out everywhere)")
    p.add_argument("decision", nargs="?", help="accept | edit | reject-non-english | reject-not-found | "
                   "reject-instrumental | reject-other")
    p.add_argument("--text", help="the corrected lyric for `edit` (- reads standard input)")
    p.add_argument("--curator", default="cli", help="who decides (recorded in the audit log)")
    p.add_argument("--comment", help="decide: a note kept with the decision (audit log and export)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--role", choices=["curator", "admin"], default="curator", help="add-curator: the role")
    p.add_argument("--replace", action="store_true",
                   help="add-curator: set a new password/role for an existing one (ends their sessions)")
    p.add_argument("--password-stdin", action="store_true", help="add-curator: read the password from standard input")
    p.add_argument("--host", default="127.0.0.1", help="serve: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8070, help="serve: port (default 8070)")
    p.add_argument("--lease-seconds", type=int, default=600, help="serve: how long a claimed item stays yours without the page open (an open page renews it)")
    p.add_argument("--airflow-url", help="serve: Airflow API server for snapshot rebuilds, e.g. http://127.0.0.1:8080")
    p.add_argument("--rebuild-every", type=int, help="serve: trigger a rebuild after this many new decisions")
    p.add_argument("--secret-file", help="serve: file holding the session signing key (default: random per start)")
    p.add_argument("--secure-cookies", action="store_true", help="serve: HTTPS-only cookies (behind a TLS proxy)")
    p.add_argument("--trusted-proxy", metavar="ADDRESSES",
                   help="serve: reverse proxies (comma-separated addresses or networks, e.g. 127.0.0.1) whose "
                        "X-Forwarded-For names the client, for login throttling; default "
                        "$IMAGE2SONG_REVIEW_TRUSTED_PROXIES, else none (the peer address counts)")

    p = add("snapshot", cmd_snapshot, "build, list, show, compare or verify versioned Parquet snapshots",
            "build: select approved posts after the recipe (default: the paper's protocol), check for leakage, "
            "publish Parquet + manifest + datasheet (a damaged latest snapshot is republished). list: published "
            "snapshots. show [V]: a snapshot's headline (default latest; --json for the whole manifest). "
            "diff A B: rows added/removed/changed per split and part, songs gained/lost, songs whose lyric or "
            "modeling text changed, songs that moved side. verify [V]: check every snapshot (or V) against "
            "the catalog and its manifest, down to each Parquet page's checksum; exit status 1 when any is "
            "damaged.")
    p.add_argument("action", choices=["build", "list", "show", "diff", "verify"])
    p.add_argument("version", nargs="?",
                   help="snapshot version or folder (show; default latest; diff: the old one; verify: default all)")
    p.add_argument("other", nargs="?", help="diff: the new snapshot (version or folder)")
    p.add_argument("--test-songs", type=int, default=100, help="split A: songs held out (default 100)")
    p.add_argument("--min-posts", type=int, default=5, help="keep songs with at least this many posts")
    p.add_argument("--posts-per-song", type=int, default=5, help="posts kept per song, by favorites")
    p.add_argument("--test-images", type=int, default=1, help="split B: images held out per song (default 1)")
    p.add_argument("--near-duplicate-bits", type=int, default=4,
                   help="perceptual-hash distance (of 64 bits) that counts as the same image; -1: exact only")
    p.add_argument("--seed", type=int, default=None, help="membership seed (default IMAGE2SONG_SEED)")
    p.add_argument("--json", action="store_true", help="show/diff/verify: print JSON")

    p = add("tags", cmd_tags, "tag a snapshot's images (objects, attributes, ImageNet classes) into the tag store",
            "Tag the images of a snapshot that the tag store (IMAGE2SONG_TAG_STORE) does not hold yet with the "
            "backend IMAGE2SONG_TAG_BACKEND (default: the packaged EfficientNet-Lite0 plus pixel attributes), "
            "then write the snapshot's views, one Parquet file per vocabulary (obj, attr, obj+attr, imagenet). "
            "Images are tagged once per tagger, whatever the snapshot; unreadable images get an error row.")
    p.add_argument("--snapshot", help="version or folder (default latest)")
    p.add_argument("--vocabulary", default="obj+attr", choices=["obj", "attr", "obj+attr", "imagenet"],
                   help="the vocabulary whose view is `tags_path` (default obj+attr); all are written")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--workers", type=int, default=None, help="decode worker processes (default: sized to the cores)")
    p.add_argument("--retry-errors", action="store_true", help="tag again images recorded as undecodable")
    p.add_argument("--compact", action="store_true", default=None,
                   help="merge the tagger's parts in the store into one afterwards (default: once it has more "
                        "than 16 parts)")

    p = add("train", cmd_train, "train the paper's model, its baselines and the hybrid on a snapshot, evaluate "
            "them (R@K, MedR, 95 % intervals, chance) and write the run's report")
    p.add_argument("--snapshot", help="version or folder (default latest)")
    p.add_argument("--split", choices=["a", "b"], action="append",
                   help="the paper's split A (unseen songs) or B (unseen images); repeat for both (default both)")
    p.add_argument("--vocabulary", action="append", choices=["obj", "attr", "obj+attr", "imagenet"],
                   help="tag vocabulary; repeat for several, one experiment each per split; the first gets every "
                        "model and baseline, the others the paper's model alone (default obj+attr, obj, attr: "
                        "the paper's Table 2)")
    p.add_argument("--baselines-on", choices=stages.BASELINES_ON,
                   help="train the baselines, the permuted-lyrics control and the hybrid on the first vocabulary "
                        "only (default) or on every one")
    p.add_argument("--model", choices=["bilstm+attention", "bilstm"], default="bilstm+attention",
                   help="the paper's model with or without tag attention (default with)")
    p.add_argument("--loss", choices=["mse", "cosine", "margin"], default="mse", help="the paper's model's loss (default mse)")
    p.add_argument("--word-vectors", help="glove-6b-50d, word2vec-english, word2vec-snapshot or a word2vec file "
                   "(default IMAGE2SONG_WORD_VECTORS)")
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs; early stopping on validation (default 30)")
    p.add_argument("--bilstm-epochs", type=int, help="at most this many epochs for the BiLSTM models (the paper's, the "
                   "permuted control, the Attentive Reader), whose epochs cost far more than the others' (default --epochs)")
    p.add_argument("--seed", type=int, help="training seed (default IMAGE2SONG_SEED)")
    p.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda or cuda:N")
    p.add_argument("--baselines", nargs="*", choices=list(stages.BASELINES),
                   help="baselines beside the paper's model (default all; neighbours adds the hybrid)")

    p = add("evaluate", cmd_evaluate, "re-evaluate the models of a run folder and rewrite its report")
    p.add_argument("run", help="a run folder (<state>/runs/<snapshot>/<run>)")

    p = add("search", cmd_search, "find songs for an image (or images for a song) with a trained model",
            "Rank the snapshot's songs for an image file by the model's cosine score, and show the image's "
            "tags that drove each match (their share of the cosine); with --song, rank the snapshot's "
            "images for a song. The song and image vectors are indexed once and the index is kept beside "
            "the model (exact search up to 50,000 vectors, a faiss IVF index calibrated to recall@10 >= "
            "0.99 above).")
    p.add_argument("image", nargs="?", help="an image file")
    p.add_argument("--song", help="instead of an image: a song's title ('title — artist' when titles repeat) or id")
    p.add_argument("--snapshot", help="version or folder (default latest)")
    p.add_argument("--split", choices=["a", "b"], default="b")
    p.add_argument("--model", help="a trained model's folder, <run>/<vocabulary>/split-<a|b> (default: the latest run of the snapshot)")
    p.add_argument("--top", type=int, default=10, help="results to show (default 10)")
    p.add_argument("--index", choices=["auto", "exact", "ivf"], default="auto",
                   help="auto (default): exact up to 50,000 vectors, faiss IVF above")
    p.add_argument("--rebuild-index", action="store_true", help="rebuild the search index even if it is there")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = add("db", cmd_db, "create or upgrade the catalog (SQLite by default, IMAGE2SONG_DB_URL for PostgreSQL)")
    p.add_argument("action", choices=["upgrade", "current"])

    p = add("airflow", cmd_airflow, "run Airflow with the project's configuration",
            "`image2song airflow ui`: the web UI, scheduler, dag-processor and triggerer on 127.0.0.1 (embedded "
            "default), with the demo world. `image2song airflow cluster --help`: the scale-out deployment "
            "(PostgreSQL, Celery, Redis). `image2song airflow alerts`: recent failure and deadline alerts. "
            "Anything else is passed to the `airflow` command with the project's environment. Every one of "
            "them stops all its children on Ctrl-C or SIGTERM.")
    p.add_argument("airflow_args", nargs=argparse.REMAINDER,
                   help="`ui`, `cluster …`, `alerts`, or arguments for the `airflow` command")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # Alembic narrates every migration step; say only what goes wrong
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return args.func(args, Settings.from_env())
    except stages.StageFailed as error:  # what succeeded is stored; the failed records are tried next run
        print(f"image2song: {error}", file=sys.stderr)
        return 1
    except (LookupError, FileNotFoundError, ValueError) as error:
        print(f"image2song: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
