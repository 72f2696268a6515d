// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.view;

public class View {
  public static final int FOCUS_DOWN = 130;
  public interface OnClickListener { void onClick(View v); }
  public interface OnApplyWindowInsetsListener { WindowInsets onApplyWindowInsets(View v, WindowInsets insets); }
  public void setOnClickListener(OnClickListener l) { throw new RuntimeException("stub"); }
  public void setOnApplyWindowInsetsListener(OnApplyWindowInsetsListener listener) { throw new RuntimeException("stub"); }
  public void setPadding(int left, int top, int right, int bottom) { throw new RuntimeException("stub"); }
  public void setEnabled(boolean enabled) { throw new RuntimeException("stub"); }
  public boolean post(Runnable action) { throw new RuntimeException("stub"); }
}
