"""The front doors: the public, admin and debug apps and the parsing they share. They hold
a reference to what they tell, never an actor."""
