"""What a destination is: where its data really lives, and how much room it has."""
