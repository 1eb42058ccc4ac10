"""Reader app over HTTP: tokens, 403 with nothing written, traversal attempts, blinding, upsert, bad values."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from review_helpers import METHODS, write_exam

with warnings.catch_warnings():  # newer Starlette suggests httpx2; the test client works with httpx
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from starlette.testclient import TestClient

from recon_plugin.review.app import create_app, reader_links
from recon_plugin.review.errors import CorruptDatabaseError, StudyVersionError
from recon_plugin.review.study import DB_FILE, STUDY_FILE, create_study


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("review_app")
    exam = write_exam(root / "exam.h5", slices=2)
    create_study(root / "study", [exam], readers=["alice", "bob"], single=True, seed=2)
    return root / "study"


@pytest.fixture
def client(study_dir) -> TestClient:
    with sqlite3.connect(study_dir / DB_FILE) as conn:
        conn.execute("DELETE FROM answers")
    return TestClient(create_app(study_dir))


def token(client: TestClient, reader: str = "alice") -> str:
    return client.app.state.study.token(reader)


def rows(study_dir: Path) -> list[tuple]:
    with sqlite3.connect(study_dir / DB_FILE) as conn:
        return conn.execute("SELECT * FROM answers ORDER BY reader, item").fetchall()


def full_answer(pref: str = "left", score: int = 4) -> dict:
    scores = {"quality": score, "artefacts": score, "blurring": score}
    return {"preference": pref, "scores": {"left": scores, "right": scores}}


def first(client: TestClient, kind: str = "pair", reader: str = "alice") -> dict:
    listing = client.get(f"/r/{token(client, reader)}/api/items").json()
    return next(i for i in listing["items"] if i["kind"] == kind)


def test_token_link_serves_page_and_assets(client):
    t = token(client)
    page = client.get(f"/r/{t}/")
    assert page.status_code == 200 and 'src="static/reader.js"' in page.text
    assert (
        page.headers["referrer-policy"] == "no-referrer"
        and "default-src 'self'" in page.headers["content-security-policy"]
    )
    assert client.get(f"/r/{t}/static/reader.js").status_code == 200
    assert client.get(f"/r/{t}", follow_redirects=False).headers["location"] == f"/r/{t}/"
    links = reader_links(client.app.state.study, "http://127.0.0.1:8765")
    assert links["alice"] == f"http://127.0.0.1:8765/r/{t}/"


@pytest.mark.parametrize("bad", ["", "nope", "A" * 32, "A" * 500])
def test_wrong_or_missing_token_is_403_and_writes_nothing(client, study_dir, bad):
    item = first(client)
    alias = item["images"][0]["url"].split("/")[-1]
    for path in ("/", f"/r/{bad}/", f"/r/{bad}/static/reader.js", f"/r/{bad}/api/items", f"/r/{bad}/img/{alias}"):
        response = client.get(path)
        assert response.status_code in (403, 404), path
        assert alias not in response.text and "reader.js" not in response.text
    for method in ("put", "post"):
        response = client.request(method, f"/r/{bad}/api/answers/{item['id']}", json=full_answer())
        assert response.status_code in (403, 404)
    assert client.get("/").status_code == 403 and client.get("/r/nope/api/items").status_code == 403
    assert rows(study_dir) == []


def test_reading_list_is_blind(client, study_dir):
    text = client.get(f"/r/{token(client)}/api/items").text
    study = json.loads((study_dir / STUDY_FILE).read_text())
    for secret in (*METHODS, *study["images"], "exam.h5", "swapped", "methods"):
        assert secret not in text
    listing = json.loads(text)
    assert listing["total"] == 2 * 3 + 2 * 4 and listing["answered"] == 0 and listing["resume"] == 0
    bob = client.get(f"/r/{token(client, 'bob')}/api/items").json()
    assert [i["id"] for i in bob["items"]] != [i["id"] for i in listing["items"]]


def test_images_by_alias_only(client, study_dir):
    t = token(client)
    item = first(client)
    meta = item["images"][0]
    response = client.get(f"/r/{t}/{meta['url']}")
    assert response.status_code == 200
    pixels = np.frombuffer(response.content, dtype="<f4")
    assert pixels.size == meta["rows"] * meta["cols"] and np.isfinite(pixels).all()
    study = client.app.state.study
    name = next(iter(study.data["images"]))
    assert client.get(f"/r/{t}/img/{name}").status_code == 404  # the stored name is not an alias
    bob_item = first(client, reader="bob")
    assert client.get(f"/r/{t}/{bob_item['images'][0]['url']}").status_code == 404  # another reader's alias


@pytest.mark.parametrize(
    "path",
    [
        "img/../../study.json",
        "img/..%2f..%2fstudy.json",
        "img/%2e%2e/%2e%2e/study.json",
        "img/%2e%2e%2f%2e%2e%2fstudy.json",
        "static/..%2f..%2f..%2fstudy.json",
        "static/%2e%2e%2fapp.py",
        "static/../app.py",
        "static//etc/passwd",
        "img//etc/passwd",
        "img/%2fetc%2fpasswd",
        "static/%2Fwork%2Fstudy.json",
        "../study.json",
        "%2e%2e/study.json",
        "static/reader.html%00.js",
    ],
)
def test_path_traversal_attempts(client, study_dir, path):
    t = token(client)
    response = client.get(f"/r/{t}/{path}")
    assert response.status_code in (403, 404)
    assert '"readers"' not in response.text and "root:" not in response.text and "import" not in response.text


def test_raw_traversal_paths_without_client_normalisation(client):
    t = token(client)
    for raw in (f"/r/{t}/img/../../study.json", f"/r/{t}/static/../../study.json", "/r/../study.json"):
        response = client.get(raw)
        assert response.status_code in (403, 404) and '"readers"' not in response.text


def test_answer_upsert_and_progress(client, study_dir):
    t = token(client)
    item = client.get(f"/r/{t}/api/items").json()["items"][0]
    url = f"/r/{t}/api/answers/{item['id']}"
    partial = (
        {"preference": "left", "scores": {"left": {"quality": 2}}}
        if item["kind"] == "pair"
        else {"scores": {"left": {"quality": 2}}}
    )
    reply = client.put(url, json=partial).json()
    assert reply == {"saved": True, "complete": False, "answered": 0}
    complete = (
        full_answer("right", 5) if item["kind"] == "pair" else {"scores": {"left": full_answer()["scores"]["left"]}}
    )
    reply = client.post(url, json=complete).json()
    assert reply["complete"] and reply["answered"] == 1
    stored = rows(study_dir)
    assert len(stored) == 1 and stored[0][0] == "alice" and stored[0][1] == item["id"]
    listing = client.get(f"/r/{t}/api/items").json()
    assert listing["answered"] == 1 and listing["resume"] == 1 and listing["items"][0]["complete"]
    assert listing["items"][0]["answer"]["scores"]["left"]["quality"] in (4, 5)
    client.put(url, json=complete)
    assert len(rows(study_dir)) == 1  # twice the same item: updated, never duplicated


@pytest.mark.parametrize(
    "body",
    [
        {"preference": "up"},
        {"preference": 1},
        {"scores": {"left": {"quality": 0}}},
        {"scores": {"left": {"quality": 6}}},
        {"scores": {"left": {"quality": "3"}}},
        {"scores": {"left": {"quality": 3.5}}},
        {"scores": {"left": {"quality": True}}},
        {"scores": {"left": {"sharpness": 3}}},
        {"scores": {"middle": {"quality": 3}}},
        {"scores": {"left": [3]}},
        {"scores": [1, 2]},
        {"extra": 1},
        [1, 2, 3],
        "left",
    ],
)
def test_bad_values_are_400_and_write_nothing(client, study_dir, body):
    url = f"/r/{token(client)}/api/answers/{first(client)['id']}"
    assert client.put(url, json=body).status_code == 400
    assert rows(study_dir) == []


def test_malformed_bodies_and_unknown_items(client, study_dir):
    t = token(client)
    url = f"/r/{t}/api/answers/{first(client)['id']}"
    assert client.put(url, content=b"{not json").status_code == 400
    assert client.put(url, content=b"\xff\xfe").status_code == 400
    assert client.put(url, content=b"{" + b" " * 10000 + b"}").status_code == 413
    assert client.put(f"/r/{t}/api/answers/{first(client, reader='bob')['id']}", json=full_answer()).status_code in (
        200,
        404,
    )  # a shared item id is fine: the row is alice's own
    assert client.put(f"/r/{t}/api/answers/nonexistent", json=full_answer()).status_code == 404
    assert client.put(f"/r/{t}/api/answers/..%2f..%2fstudy.json", json=full_answer()).status_code == 404
    single = first(client, "single")
    assert client.put(f"/r/{t}/api/answers/{single['id']}", json={"preference": "left"}).status_code == 400
    right = {"scores": {"right": {"quality": 3}}}
    assert client.put(f"/r/{t}/api/answers/{single['id']}", json=right).status_code == 400
    assert client.get(url).status_code == 405
    assert all(r[0] == "alice" for r in rows(study_dir)) and len(rows(study_dir)) <= 1


def test_readers_write_only_their_own_rows(client, study_dir):
    item = first(client)
    client.put(f"/r/{token(client, 'bob')}/api/answers/{item['id']}", json=full_answer("left", 2))
    client.put(f"/r/{token(client)}/api/answers/{item['id']}", json=full_answer("right", 5))
    stored = {r[0]: r for r in rows(study_dir)}
    assert sorted(stored) == ["alice", "bob"]
    assert stored["bob"][2] == "left" and stored["alice"][2] == "right"


def test_refuses_to_serve_old_or_corrupt_studies(tmp_path):
    exam = write_exam(tmp_path / "exam.h5", slices=1)
    create_study(tmp_path / "s", [exam], seed=0)
    data = json.loads((tmp_path / "s" / STUDY_FILE).read_text())
    (tmp_path / "s" / STUDY_FILE).write_text(json.dumps({**data, "version": 0}))
    with pytest.raises(StudyVersionError):
        create_app(tmp_path / "s")
    (tmp_path / "s" / STUDY_FILE).write_text(json.dumps(data))
    for suffix in ("-wal", "-shm"):
        (tmp_path / "s" / f"{DB_FILE}{suffix}").unlink(missing_ok=True)
    (tmp_path / "s" / DB_FILE).write_bytes(b"\0" * 4096)
    with pytest.raises(CorruptDatabaseError):
        create_app(tmp_path / "s")
