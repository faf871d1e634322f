import trio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from trio_background import BackgroundTasksMiddleware, from_scope

thumbnails: list[str] = []


async def make_thumbnail(image_id: str) -> None:
    await trio.sleep(2)
    thumbnails.append(image_id)


async def upload_image(request: Request) -> JSONResponse:
    image_id = request.path_params["image_id"]
    from_scope(request.scope).add_task(make_thumbnail, image_id)
    return JSONResponse({"image_id": image_id}, status_code=202)


app = Starlette(
    routes=[Route("/images/{image_id}", upload_image, methods=["PUT"])],
    middleware=[Middleware(BackgroundTasksMiddleware, drain_timeout=20)],
)
