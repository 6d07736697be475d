module github.com/flowkeep/flowkeep

go 1.26.8
