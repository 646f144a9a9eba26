"""`run`: one scene into one label store. The spine is ``spine.run_scene``; its docstring
lists the steps (plan -> connect -> guard -> store -> submit -> summary) and their modules."""
