"""rclone itself: finding the binary, running it, reading its errors, and remote names."""
