"""nbgrader settings for the ichlab exercises; nbgrader reads this file when run from this folder.

The course layout is nbgrader's own: ``source/<assignment>/`` holds the instructor versions
with solutions and hidden tests, ``release/<assignment>/`` the student versions generated from
them. Grading adds ``submitted/``, ``autograded/``, ``feedback/`` and ``gradebook.db`` here,
or in the private copy of this folder that the instructor grades in.
"""

c = get_config()  # noqa: F821 (nbgrader provides get_config when it loads this file)

c.CourseDirectory.course_id = "ichlab"

# Per-cell limit in seconds: an endless loop in one submission costs this much, then the kernel
# is interrupted and grading goes on with the next cell and the next student. It leaves room for
# the slowest import cell (timm and pytorch_grad_cam) on a busy 2-core machine.
c.Execute.timeout = 60

# A submission that deletes a test cell gets it back, with its points, before it is executed.
c.OverwriteCells.add_missing_cells = True

# Learning-platform downloads are named "<student id>_<anything>_<notebook>.ipynb", for example
# "s1234_ex1_hu_windows.ipynb" or "s1234_attempt_2_ex1_hu_windows.ipynb"; `nbgrader zip_collect`
# files them under submitted/<student id>/<assignment>/.
c.ZipCollectApp.collector_plugin = "nbgrader.plugins.FileNameCollectorPlugin"
c.FileNameCollectorPlugin.named_regexp = r".*/(?P<student_id>[A-Za-z0-9.@-]+)_(?:[^/]*_)?(?P<file_id>ex\d+_[a-z0-9_]+?\.ipynb)$"
