"""Uploads to shared storage from the console's file browser: into ``shared/`` only (``agents/``
are the agents' homes), by the storage's own key rules, never over an existing file unless asked,
at most ``[console] max_upload_mb``.

The server's guard reads a POST body only after the session check, and refuses one announced
larger than the limit before reading it (hiclaw.console.server)."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web

from hiclaw.console.actions import Actions, hidden
from hiclaw.errors import InvalidInputError
from hiclaw.storage import layout

#: What a multipart body carries besides the file (boundaries, the other fields).
OVERHEAD = 64 * 1024


def too_large(max_bytes: int) -> InvalidInputError:
    return InvalidInputError(f"the file is larger than the upload limit of {max_bytes / 2**20:g} MB",
                             hint="raise [console] max_upload_mb in config.toml, or put it in storage another way")


def upload_form(folder: str, csrf: str) -> str:
    """The upload form of a folder under ``shared/`` (nothing elsewhere)."""
    if not folder.startswith(layout.SHARED):
        return ""
    return ('<form method="post" action="/files/upload" enctype="multipart/form-data" class="upload">'
            f'{hidden("csrf", csrf)}{hidden("folder", folder)}'
            '<label>Upload here <input type="file" name="file" required></label>'
            '<label>as <input name="name" maxlength="200" placeholder="(its own name)"></label>'
            '<label><input type="checkbox" name="replace" value="1"> replace if it exists</label>'
            '<button>Upload</button></form>')


def upload_key(folder: str, name: str) -> str:
    """The key an upload goes to: ``folder`` + ``name``, valid by the storage rules, under ``shared/``."""
    folder = layout.validate_prefix(folder, what="folder")
    if not folder.startswith(layout.SHARED) or not folder.endswith("/"):
        raise InvalidInputError(f"uploads go into a folder under {layout.SHARED}, not {folder!r}",
                                hint="agents/ are the agents' homes; browse to a folder under shared/")
    if not name or "/" in name or "\\" in name:
        raise InvalidInputError(f"{name!r} is not a file name", hint="give a name without '/', e.g. notes.md")
    return layout.validate_key(folder + name, what="upload")


class Uploads:
    """``max_bytes``: the largest file taken (``[console] max_upload_mb``)."""

    def __init__(self, plane: Any, max_bytes: int) -> None:
        self.plane = plane
        self.max_bytes = max_bytes

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/files/upload", self.upload)]

    async def upload(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        folder = str(form.get("folder") or "")
        back = f"/files?path={quote(folder)}"
        field = form.get("file")
        try:
            if not isinstance(field, web.FileField):
                raise InvalidInputError("no file was sent", hint="choose a file, then press Upload")
            key = upload_key(folder, str(form.get("name") or "").strip() or field.filename)
            data = field.file.read(self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise too_large(self.max_bytes)
            if form.get("replace") != "1" and await self.plane.storage.stat(key) is not None:
                raise InvalidInputError(f"{key} exists already: nothing was written",
                                        hint="tick 'replace if it exists', or give another name")
        except InvalidInputError as exc:
            return Actions.refused(request, exc, back)  # the console's one "Not done" page
        await self.plane.storage.put(key, data)
        self.plane.state.log_event("file.uploaded", key, key=key, bytes=len(data), by="admin")
        raise web.HTTPSeeOther(back)
