#!/usr/bin/env bash
# Installs Debian's headless Chromium + ChromeDriver for the browser test of the web page.
# Without root or apt-get the browser test is skipped with a message (everything else still runs).
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium + chromium-driver (Debian packages) for the browser test"
  (apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1)) ||
    echo "warning: could not install chromium; the browser test will be skipped"
else
  echo "note: chromium not found and cannot be installed here (needs root + apt-get); the browser test will be skipped"
fi
exit 0
