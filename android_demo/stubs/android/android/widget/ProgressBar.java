// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.widget;

public class ProgressBar extends android.view.View {
  public synchronized int getProgress() { throw new RuntimeException("stub"); }
  public synchronized void setProgress(int progress) { throw new RuntimeException("stub"); }
}
