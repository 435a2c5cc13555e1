"""The labelled corpus through the pipeline with cross-request correlation, on a simulated clock.

The promises users rely on: no record whose ground truth is a real user is ever downgraded, and
the monitor-triggered Auth0 errors whose evidence was shipped are downgraded (>= 99%).
"""

from __future__ import annotations

from collections import Counter

from .corpus import corpus_id, generate
from .helpers import attributes, pipeline, records


def run_corpus(**env: str):
    corpus = generate()
    p = pipeline(**{"TRIAGE_CORRELATION_WINDOW": "2", **env})
    out = []
    for sent_at, request in corpus.requests:
        p.process(request, now=sent_at, payload=request.SerializeToString())  # as the receivers call it
        out.extend(records(request))
        released = p.release_ready(now=sent_at)
        if released:
            out.extend(records(released[0]))
    end = corpus.requests[-1][0] + 10
    for released in (p.release_ready(now=end), p.release_all(now=end)):
        if released:
            out.extend(records(released[0]))
    return corpus, out


def test_corpus_promises() -> None:
    """No user record downgraded; >= 99% of monitor Auth0 errors with shipped evidence downgraded; nothing lost."""
    corpus, out = run_corpus()
    ids = [corpus_id(r) for r in out]
    assert sorted(ids) == sorted(corpus.truth)  # every record comes out exactly once

    downgraded = {corpus_id(r) for r in out if "triage.rule" in attributes(r)}
    truth = corpus.truth
    users_downgraded = [i for i in downgraded if truth[i].source == "user"]
    assert users_downgraded == []

    targets = [i for i, t in truth.items() if t.auth0_error and t.evidence_shipped and t.source in ("synthetic", "probe")]
    hit = sum(1 for i in targets if i in downgraded)
    assert len(targets) > 500  # the corpus has enough monitor errors to measure
    assert hit / len(targets) >= 0.99, f"{hit}/{len(targets)} monitor errors downgraded"

    # Only monitor-triggered Auth0 errors are downgraded: never bots, services, or errors without evidence.
    assert all(truth[i].auth0_error and truth[i].source in ("synthetic", "probe") and truth[i].evidence_shipped
               for i in downgraded)

    # Users' own Auth0 errors exist in the corpus (the hard negative is real) and stay at ERROR.
    user_errors = [r for r in out if truth[corpus_id(r)].source == "user" and truth[corpus_id(r)].auth0_error]
    assert user_errors and all(r.severity_number == 17 for r in user_errors)


def test_corpus_without_cross_request_correlation_misses_most() -> None:
    """Why correlation exists: within single requests alone, most monitor errors cannot be decided."""
    corpus, out = run_corpus(TRIAGE_CORRELATION_TTL="0")
    downgraded = sum(1 for r in out if "triage.rule" in attributes(r))
    targets = sum(1 for t in corpus.truth.values() if t.auth0_error and t.evidence_shipped and t.source in ("synthetic", "probe"))
    assert downgraded < targets / 2


def test_corpus_sources_match_ground_truth_for_access_logs() -> None:
    """Every access log (a record with its own user agent) is classified as its ground truth."""
    corpus, out = run_corpus()
    mismatches = Counter()
    for r in out:
        a = attributes(r)
        if "user_agent.original" in a and corpus.truth[corpus_id(r)].source != a["triage.source"]:
            mismatches[(corpus.truth[corpus_id(r)].source, a["triage.source"], a["user_agent.original"])] += 1
    assert not mismatches
