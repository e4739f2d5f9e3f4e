import sys, pandas as pd
t=pd.read_csv(sys.argv[1]+'/test.csv'); a=pd.read_csv(sys.argv[1]+'/test_answers.csv'); df=t.merge(a,on='id')
for run in sys.argv[2:]:
    p=pd.read_csv(f'{run}/full/test_probs.csv').rename(columns=dict(a='pa',b='pb',c='pc',d='pd'))
    d=df.merge(p,on='id'); d['ok']=d[['pa','pb','pc','pd']].idxmax(axis=1).str[1]==d.answer
    print(run, round(d.ok.mean(),4), d.groupby('type').ok.mean().round(3).to_dict())
