"""OpenAI's Files API, for batch input and output: upload (multipart), look up, download, delete.

A file belongs to the API key that uploaded it (a batch's result files to the batch's key): another key gets 404
for it, as for a stored response, and does not see it listed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from redis.exceptions import RedisError

from api.context import owner_of
from api.errors import ERROR_RESPONSES
from batch.filestore import new_id, save_upload, validate_batch_file
from broker.batches import BatchStore
from broker.errors import BrokerUnavailable, InvalidRequest, NotFound
from broker.producer import Producer
from broker.settings import Settings
from serving.responses import FileDeleted, FileList, FileObject

router = APIRouter(responses=ERROR_RESPONSES)


@contextmanager
def broker_errors() -> Iterator[None]:
    """A Redis failure while reading or writing records is a 503, like every other broker outage."""
    try:
        yield
    except RedisError as exc:
        raise BrokerUnavailable(f"the broker is unreachable: {exc}") from exc


def store_of(request: Request) -> BatchStore:
    store: BatchStore | None = getattr(request.app.state, "batch_store", None)
    if store is None:
        producer: Producer = request.app.state.producer
        store = request.app.state.batch_store = BatchStore(producer.client, producer.keys)
    return store


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_file(store: BatchStore, file_id: str, owner: str) -> tuple[dict[str, Any], str]:
    """The owner's file (its object and path); 404 when there is none or another key's."""
    with broker_errors():
        found = await store.file(file_id, owner)
    if found is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return found


@router.post("/v1/files")
async def create_file(
    request: Request, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
) -> FileObject:
    if purpose != "batch":
        raise InvalidRequest(f"queuechat stores files for batches only: purpose must be 'batch', not {purpose!r}.",
                             param="purpose")  # fmt: skip
    settings = settings_of(request)
    file_id = new_id("file")
    path, size = await save_upload(file, settings.files_dir, file_id, settings.files_max_bytes)
    try:
        summary = await asyncio.to_thread(validate_batch_file, path, settings.batch_max_requests)
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": size,
            "created_at": int(time.time()),
            "filename": file.filename or "upload.jsonl",
            "purpose": purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
            # not OpenAI's: what batch creation checks the endpoint against
            "urls": sorted(summary.urls),
            "lines": summary.lines,
        }
        with broker_errors():
            await store_of(request).add_file(obj, str(path), owner_of(request))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return _public(obj)


def _public(obj: dict[str, Any]) -> FileObject:
    """The OpenAI file object, without what the record keeps for batch creation (``urls``, ``lines``)."""
    return FileObject.model_validate(obj)


@router.get("/v1/files")
async def list_files(request: Request) -> FileList:
    with broker_errors():
        found = await store_of(request).files_of(owner_of(request))
    return FileList(data=[_public(f) for f in found], has_more=False)


@router.get("/v1/files/{file_id}")
async def retrieve_file(file_id: str, request: Request) -> FileObject:
    obj, _ = await get_file(store_of(request), file_id, owner_of(request))
    return _public(obj)


@router.get(
    "/v1/files/{file_id}/content",
    response_model=None,
    responses={200: {"content": {"application/jsonl": {}}, "description": "The file's lines"}},
)
async def file_content(file_id: str, request: Request) -> FileResponse:
    _, path = await get_file(store_of(request), file_id, owner_of(request))
    if not Path(path).exists():
        raise NotFound(f"The content of file {file_id} is no longer stored.", param="file_id")
    return FileResponse(path, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> FileDeleted:
    store = store_of(request)
    _, path = await get_file(store, file_id, owner_of(request))
    with broker_errors():
        await store.delete_file(file_id)
    Path(path).unlink(missing_ok=True)
    return FileDeleted(id=file_id, deleted=True)
