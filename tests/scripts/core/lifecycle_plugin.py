"""Records init and shutdown into the file named by LIFECYCLE_FILE."""

import os

from runtime import hookimpl


@hookimpl
async def init(context):
    with open(os.environ["LIFECYCLE_FILE"], "a") as f:
        f.write(f"init {context.settings.entry_script is not None}\n")


@hookimpl
def shutdown():
    with open(os.environ["LIFECYCLE_FILE"], "a") as f:
        f.write("shutdown\n")
