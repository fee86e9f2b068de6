"""Guest images: template recipe files, the rootfs and kernel builder, and the image cache."""
