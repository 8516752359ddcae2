// The report's ratio-band view: draws the histogram of one update's probability ratios against its clip
// band, from the frames in #ratio-data; proximo/doctor.py inlines this file into the page.
(function(){
var frames=JSON.parse(document.getElementById('ratio-data').textContent);
var slider=document.getElementById('ratio-slider'),svg=document.getElementById('ratio-svg'),
    info=document.getElementById('ratio-info');
if(!frames.length){info.textContent='This run logged no ratio histograms.';slider.disabled=true;return;}
slider.max=frames.length-1;
var W=1300,H=300,L=60,R=10,T=12,B=34,pw=W-L-R,ph=H-T-B,lo=0,hi=2;
function X(r){return L+(r-lo)/(hi-lo)*pw;}
function pct(v){return v==null?'n/a':(100*v).toFixed(1)+'%';}
function draw(i){
  var f=frames[i],c=f.counts,n=c.length,tot=0,mx=1;
  for(var k=0;k<n;k++){tot+=c[k];if(c[k]>mx)mx=c[k];}
  var s='<rect x="'+X(1-f.eps)+'" y="'+T+'" width="'+(X(1+f.eps)-X(1-f.eps))+'" height="'+ph+
        '" fill="#2ca02c" fill-opacity="0.12"/>';
  var bw=pw/n;
  for(var k=0;k<n;k++){
    var a=lo+k*(hi-lo)/n,b=a+(hi-lo)/n,h=c[k]/mx*ph,mid=(a+b)/2;
    var out=(b<=1-f.eps+1e-9)||(a>=1+f.eps-1e-9);
    s+='<rect x="'+(L+k*bw+0.5)+'" y="'+(T+ph-h)+'" width="'+(bw-1)+'" height="'+h+'" fill="'+
       (out?'#d62728':'#1f77b4')+'"><title>r in ['+a.toFixed(2)+', '+b.toFixed(2)+'): '+c[k]+'</title></rect>';
  }
  [1-f.eps,1,1+f.eps].forEach(function(r,j){
    s+='<line x1="'+X(r)+'" x2="'+X(r)+'" y1="'+T+'" y2="'+(T+ph)+'" stroke="'+(j==1?'#333':'#2ca02c')+
       '" stroke-dasharray="'+(j==1?'2 3':'6 3')+'"/>';
    if(j!=1)s+='<text x="'+(X(r)+(j==0?-4:4))+'" y="'+(T+ph+28)+'" text-anchor="'+(j==0?'end':'start')+
       '" font-size="12" fill="#2ca02c">'+(j==0?'1 - eps = ':'1 + eps = ')+r.toFixed(3)+'</text>';
  });
  for(var t=0;t<=2.0001;t+=0.25){s+='<text x="'+X(t)+'" y="'+(T+ph+14)+'" text-anchor="middle">'+t.toFixed(2)+'</text>';}
  s+='<text x="'+(L-6)+'" y="'+(T+10)+'" text-anchor="end">'+mx+'</text><text x="'+(L-6)+'" y="'+(T+ph)+
     '" text-anchor="end">0</text><rect x="'+L+'" y="'+T+'" width="'+pw+'" height="'+ph+'" fill="none" stroke="#bbb"/>';
  svg.innerHTML=s;
  info.innerHTML='<b>update '+f.update+'</b> (step '+(f.step==null?'?':f.step.toLocaleString())+
    ', '+(i+1)+' of '+frames.length+'): clip band ['+(1-f.eps).toFixed(3)+', '+(1+f.eps).toFixed(3)+
    '], '+(f.outside==null?'a band narrower than one histogram bin: the share outside it cannot be read from the histogram':
    '<b>'+pct(f.outside)+'</b> of the last epoch\'s samples lie outside it')+
    (f.beyond?(' ('+f.beyond+' beyond r = 2, off the chart)'):'')+
    '; clip fraction averaged over all '+(f.epochs==null?'?':f.epochs)+' epochs: '+pct(f.clip_fraction)+
    '; r ranged '+(f.rmin==null?'?':f.rmin.toFixed(3))+' to '+(f.rmax==null?'?':f.rmax.toFixed(3))+
    '; KL '+(f.kl==null?'?':f.kl.toPrecision(3))+'.';
  slider.value=i;
}
document.getElementById('ratio-prev').onclick=function(){draw(Math.max(0,+slider.value-1));};
document.getElementById('ratio-next').onclick=function(){draw(Math.min(frames.length-1,+slider.value+1));};
slider.oninput=function(){draw(+slider.value);};
document.addEventListener('keydown',function(e){
  if(e.key=='ArrowLeft')document.getElementById('ratio-prev').onclick();
  if(e.key=='ArrowRight')document.getElementById('ratio-next').onclick();});
var start=0,best=-1;
frames.forEach(function(f,i){if(f.clip_fraction!=null&&f.clip_fraction>best){best=f.clip_fraction;start=i;}});
draw(start);
})();
