"""Users: just enough to own agents and workflows."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict

from agents_api.deps import Connection
from agents_api.errors import SERVICE_ERRORS, problem_responses
from agents_api.http import etag, record_response
from toolkit.aio.repositories import users
from toolkit.records import Email, Name
from toolkit.repositories.records import User

router = APIRouter(prefix="/users", tags=["users"], responses=SERVICE_ERRORS)


class NewUser(BaseModel):
    """A user to create (the toolkit's UserCreate, without what a client must not set)."""

    model_config = ConfigDict(extra="forbid")

    email: Email
    display_name: Name


@router.post("", status_code=201, response_model=User, responses=problem_responses(409))
async def create_user(body: NewUser, conn: Connection) -> Response:
    """Create a user; 409 if the email is taken."""
    user = await users.create(conn, body.model_dump())
    headers = {"Location": f"/users/{user.id}", "ETag": etag(user.version)}
    return record_response(user, status_code=201, headers=headers)


@router.get("/{user_id}", response_model=User, responses=problem_responses(404))
async def get_user(user_id: UUID, conn: Connection) -> Response:
    """One user."""
    user = await users.get(conn, user_id)
    return record_response(user, headers={"ETag": etag(user.version)})
