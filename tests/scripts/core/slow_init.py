"""An init() that takes a minute (a big model loading): Ctrl-C must not wait for it."""

import time


def init():
    time.sleep(60)


def run(data):
    return data
