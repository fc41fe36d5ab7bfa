"""The right to be forgotten: delete users from every lakehouse table (and, with --vacuum, from old versions).

    spark-submit jobs/forget_users.py --users u1,u2 [--users-file ids.txt] [--vacuum [--retention-hours 168]]

Deleted rows stay in older Delta table versions until VACUUM removes their files.
"""

import sys

from adrec_spark.cli import main

if __name__ == "__main__":
    sys.exit(main(["forget-users", *sys.argv[1:]]))
