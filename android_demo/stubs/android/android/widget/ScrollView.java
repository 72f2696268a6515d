// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.widget;

public class ScrollView extends FrameLayout {
  public boolean fullScroll(int direction) { throw new RuntimeException("stub"); }
}
