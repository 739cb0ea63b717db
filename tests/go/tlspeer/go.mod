module tlspeer

go 1.19
