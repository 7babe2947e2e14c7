"""Downloads: served by a local http.server on 127.0.0.1 (never the internet), verified, cached, atomic."""
from __future__ import annotations

import functools
import http.server
import threading

import pytest

from data import download
from data.e2e.prepare import prepare
from tests.data_test_utils import DATA_FIX, lines


class _Server:
    def __init__(self, root):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve the E2E fixture under the release's relative paths, with FILES pointing at their blob ids."""
    root = tmp_path / "www"
    (root / "e2e").mkdir(parents=True)
    files = {}
    for split in ("train", "valid", "test"):
        src = DATA_FIX / "e2e" / f"{split}.txt"
        (root / "e2e" / src.name).write_bytes(src.read_bytes())
        files[split] = download.RemoteFile(f"e2e/{src.name}", download.git_blob_id(src))
    monkeypatch.setitem(download.FILES, "e2e", files)
    srv = _Server(root)
    yield srv
    srv.close()


def test_git_blob_id_matches_git(tmp_path):
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert download.git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object`


def test_fetch_downloads_verifies_and_caches(server, tmp_path):
    cache = tmp_path / "cache"
    folder = download.fetch("e2e", ["train", "valid"], cache_dir=cache, base_url=server.url)
    assert folder == cache
    assert (cache / "train.txt").read_bytes() == (DATA_FIX / "e2e" / "train.txt").read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == ["train.txt", "valid.txt"]  # no temp files left
    assert sorted(server.requests) == ["/e2e/train.txt", "/e2e/valid.txt"]
    download.fetch("e2e", ["train", "valid"], cache_dir=cache, base_url=server.url)
    assert len(server.requests) == 2  # verified cache hit: nothing fetched again


def test_wrong_content_is_rejected_and_not_kept(server, tmp_path, monkeypatch):
    monkeypatch.setitem(download.FILES["e2e"], "valid", download.RemoteFile("e2e/valid.txt", "0" * 40))
    with pytest.raises(download.DownloadError, match="not the expected one"):
        download.fetch("e2e", ["valid"], cache_dir=tmp_path / "cache", base_url=server.url)
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_error_says_what_to_do(server, tmp_path, monkeypatch):
    monkeypatch.setitem(download.FILES["e2e"], "valid", download.RemoteFile("e2e/absent.txt", "0" * 40))
    with pytest.raises(download.DownloadError, match=r"absent\.txt .*404.*--raw-dir"):
        download.fetch("e2e", ["valid"], cache_dir=tmp_path / "cache", base_url=server.url)


def test_prepare_without_raw_dir_downloads_into_the_cache(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NLG_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NLG_LORA_DATA_URL", server.url)
    written = prepare(out_dir=tmp_path / "out", splits=["valid"])
    assert (tmp_path / "cache" / "e2e" / "valid.txt").is_file()
    assert lines(written["valid"][0])[2] == {"context": "name : Marlowe | food : Greek | family friendly : no",
                                           "completion": "Marlowe serves Greek food but isn 't family - friendly ."}


def test_pinned_blob_ids_are_those_of_the_shared_copies(shared_data, tmp_path):
    """The ids we verify downloads against are the files the shared folder holds (DART: its CRLF made LF)."""
    assert download.FILES["e2e"]["valid"].git_blob == download.git_blob_id(shared_data / "e2e" / "valid.txt")
    assert download.FILES["e2e"]["test"].git_blob == download.git_blob_id(shared_data / "e2e" / "test.txt")
    web_dev = shared_data / "webnlg_challenge_2017" / "dev.json"
    assert download.FILES["webnlg"]["valid"].git_blob == download.git_blob_id(web_dev)
    lf = tmp_path / "dart-dev.json"
    lf.write_bytes((shared_data / "dart" / "dart-v1.1.1-full-dev.json").read_bytes().replace(b"\r\n", b"\n"))
    assert download.FILES["dart"]["valid"].git_blob == download.git_blob_id(lf)
    from data.webnlg.xml_reader import RELEASED_BLOBS

    assert {k: download.FILES["webnlg"][s].git_blob for s, k in
            (("train", "train.json"), ("valid", "dev.json"), ("test", "test.json"))} == RELEASED_BLOBS
