"""Guest images: template recipe files, the rootfs and kernel builder, and the image cache.

    from wrenn.images import build_image, find_image

    image = find_image("base")        # GuestImage, or ImageNotFound naming `wrenn image build base`
    image = build_image("base", progress=print_progress)   # cached unless an input changed

The host agent boots ``image.kernel``/``image.initrd`` with ``image.kernel_cmdline`` plus ``wrenn.ip=``/
``wrenn.gw=`` on a copy-on-write layer over ``image.rootfs``. See docs/images.md.
"""

from ._builder import (
    BuildState,
    build_image,
    find_image,
    list_images,
    prune_images,
    source_key_of,
    template_folder,
    templates_dir,
)
from ._cache import DEFAULT_CACHE, cache_root
from ._errors import BuildError, ImageError, ImageNotFound, TemplateError
from ._manifest import GuestImage
from ._recipe import (
    CopyStep,
    Defaults,
    EnvStep,
    Healthcheck,
    RunStep,
    Template,
    UserStep,
    WorkdirStep,
    load_template,
    parse_template,
)

__all__ = [
    "DEFAULT_CACHE",
    "BuildError",
    "BuildState",
    "CopyStep",
    "Defaults",
    "EnvStep",
    "GuestImage",
    "Healthcheck",
    "ImageError",
    "ImageNotFound",
    "RunStep",
    "Template",
    "TemplateError",
    "UserStep",
    "WorkdirStep",
    "build_image",
    "cache_root",
    "find_image",
    "list_images",
    "load_template",
    "parse_template",
    "prune_images",
    "source_key_of",
    "template_folder",
    "templates_dir",
]
