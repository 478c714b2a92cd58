"""nbgrader configuration of the ftlib course (the repository root is the course root).

`nbgrader generate_assignment 01_choose_model`, run from the repository root, reads
solutions/01_choose_model/ and writes the learner version to course/01_choose_model/.
`ftlib check` reads `release_directory` from here; `ftlib grade` reads all of it.
"""
import os

c = get_config()  # noqa: F821 (provided by traitlets when nbgrader loads this file)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "ftlib"
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"

# Seconds per cell during autograding. Set on Execute: other spellings are silently ignored.
# Course cells fine-tune small models on a CPU, so allow minutes, not seconds.
c.Execute.timeout = 600

# What nbgrader leaves out of a release and of a submission: its defaults, and runs/, where the
# notebooks and `ftlib finetune` keep what a learner trains (notebook 09's adapter, tens of MB).
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "runs"]
