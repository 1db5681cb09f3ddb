#!/usr/bin/env python3
"""No file cycles: within every crate under crates/, no module depends (through `crate::x`,
outside its tests) on a module that depends back on it. Run by .ci/run; exits 1 on a cycle."""
import re, os, sys
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'crates')
found=False
for crate in sorted(os.listdir(root)):
    src=os.path.join(root,crate,'src')
    if not os.path.isdir(src): continue
    mods={}
    for dp,_,fs in os.walk(src):
        for f in fs:
            if not f.endswith('.rs'): continue
            p=os.path.join(dp,f); rel=os.path.relpath(p,src)[:-3]
            name=rel.replace('/mod','').replace('/','::')
            if name in ('lib','main'): continue
            mods[name]=open(p).read()
    top={m.split('::')[0] for m in mods}
    edges={}
    for m,t in mods.items():
        a=m.split('::')[0]
        refs=set(re.findall(r'crate::(\w+)',t))
        # strip test modules
        body=t.split('#[cfg(test)]')[0]
        refs=set(re.findall(r'crate::(\w+)',body))
        for grp in re.findall(r'crate::\{([^}]*)\}',body):
            refs.update(re.findall(r'(?:^|,)\s*(\w+)',grp))
        if '::' not in m:
            pass
        edges.setdefault(a,set()).update(r for r in refs if r in top and r!=a)
    # find cycles
    def dfs(n,stack,seen):
        global found
        for x in edges.get(n,()):
            if x in stack:
                print(crate,'cycle:',' -> '.join(stack[stack.index(x):]+[x])); found=True
            elif x not in seen:
                seen.add(x); dfs(x,stack+[x],seen)
    for n in edges: dfs(n,[n],{n})
print('module cycles found' if found else 'no module cycles')
sys.exit(1 if found else 0)
