"""S3Storage against a real S3 server (SeaweedFS on loopback), never an emulator."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from imgcrunch.s3_storage import S3Storage, parse_s3_url
from imgcrunch.storage import IMMUTABLE, image_key, input_csv_key, open_storage, output_csv_key
from tests.plugins.stores import Bucket


def storage_in(bucket: Bucket, prefix: str | None = None) -> S3Storage:
    return S3Storage(bucket.storage_url(prefix), endpoint=bucket.server.endpoint)


def test_objects_go_under_the_prefix_with_their_type_and_a_cache_for_good(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    request_id = uuid.uuid4()
    key = image_key(request_id, b"jpeg bytes", "jpg")
    storage.put(key, b"jpeg bytes", durable=False)
    assert storage.get(key) == b"jpeg bytes"
    assert storage.exists(key)
    assert bucket.stored() == [key]
    head = bucket.server.head(bucket.name, f"{bucket.prefix}/{key}")
    assert (head["ContentType"], head["CacheControl"]) == ("image/jpeg", IMMUTABLE)
    storage.put(output_csv_key(request_id), b"a,b\n")
    csv_head = bucket.server.head(bucket.name, f"{bucket.prefix}/{output_csv_key(request_id)}")
    assert csv_head["ContentType"] == "text/csv; charset=utf-8"


def test_a_missing_key_is_file_not_found_and_a_bad_one_refused(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    with pytest.raises(FileNotFoundError):
        storage.get("images/none/nothing.jpg")
    assert not storage.exists("images/none/nothing.jpg")
    for bad in ("../escape.jpg", "/absolute.jpg"):
        with pytest.raises(ValueError, match="invalid storage key"):
            storage.put(bad, b"x")


def test_a_big_csv_goes_up_in_parts_from_its_file_and_comes_back_whole(
    bucket: Bucket, tmp_path: Path
) -> None:
    storage = storage_in(bucket)
    key = input_csv_key(uuid.uuid4())
    data = b"S. No,Product Name,Input Image Urls\n" + b"1,A,https://a.example/x.jpg\n" * 500_000
    assert len(data) > 12 * 1024 * 1024  # over two 5 MiB parts
    (tmp_path / "upload.csv").write_bytes(data)
    with (tmp_path / "upload.csv").open("rb") as file:
        file.read(100)  # wherever the file stands, all of it is stored
        storage.put_file(key, file)
    etag = bucket.server.head(bucket.name, f"{bucket.prefix}/{key}")["ETag"]
    assert "-" in etag  # a multipart upload's ETag names its parts: "<md5>-<parts>"
    chunks = list(storage.read_chunks(key))
    assert len(chunks) > 1
    assert b"".join(chunks) == data
    with storage.opened(key) as copy:
        copy.seek(len(data) - 10)
        assert copy.read() == data[-10:]


def test_a_missing_key_is_not_found_before_anything_is_read(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    with pytest.raises(FileNotFoundError):
        storage.read_chunks("csv/none/output.csv")
    with pytest.raises(FileNotFoundError), storage.opened("csv/none/input.csv"):
        pass


def test_deleting_a_request_removes_its_objects_and_nothing_else(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    doomed, kept = uuid.uuid4(), uuid.uuid4()
    for request_id in (doomed, kept):
        for n in range(3):
            storage.put(image_key(request_id, f"{n}".encode(), "jpg"), b"x")
        storage.put(input_csv_key(request_id), b"in")
        storage.put(output_csv_key(request_id), b"out")
    another = f"{bucket.prefix}-another"
    storage_in(bucket, another).put(image_key(doomed, b"0", "jpg"), b"x")  # another deployment
    storage.remove_request(doomed)
    left = bucket.stored()
    assert not [key for key in left if str(doomed) in key]
    assert len([key for key in left if str(kept) in key]) == 5
    assert bucket.server.keys(bucket.name, f"{another}/") == [
        f"{another}/{image_key(doomed, b'0', 'jpg')}"
    ]


def test_removing_keys_removes_those_objects_only(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    scope = uuid.uuid4()
    keys = [image_key(scope, f"{n}".encode(), "jpg") for n in range(1005)]  # over one batch
    for key in keys:
        storage.put(key, b"x")
    storage.remove([*keys[:1001], image_key(scope, b"never stored", "jpg")])
    assert sorted(bucket.stored()) == sorted(keys[1001:])


def test_a_presigned_url_reads_without_credentials(bucket: Bucket) -> None:
    storage = storage_in(bucket)
    key = image_key(uuid.uuid4(), b"signed", "jpg")
    storage.put(key, b"signed")
    url = storage.presigned_url(key, seconds=60)
    assert url is not None
    assert httpx.get(url).content == b"signed"
    assert httpx.get(url.split("?")[0]).status_code == 403  # the object itself is not public


def test_the_bucket_is_checked_at_open(bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = open_storage(bucket.storage_url(), s3_endpoint=bucket.server.endpoint)
    assert opened.free_bytes() is None
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(OSError, match="S3: ") as refused:
        open_storage(bucket.storage_url(), s3_endpoint=bucket.server.endpoint)
    assert "not-the-secret" not in str(refused.value)


def test_an_s3_url_names_a_bucket() -> None:
    assert parse_s3_url("s3://shop-images/catalog/2026") == ("shop-images", "catalog/2026")
    assert parse_s3_url("s3://shop-images") == ("shop-images", "")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        parse_s3_url("https://shop-images.s3.amazonaws.com/")
