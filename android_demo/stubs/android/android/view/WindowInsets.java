// Stand-in for the Android SDK (API 35 signatures); see ../README.md.
package android.view;

public final class WindowInsets {
  public static final WindowInsets CONSUMED = null;
  public android.graphics.Insets getInsets(int typeMask) { throw new RuntimeException("stub"); }
  public static final class Type {
    public static int systemBars() { throw new RuntimeException("stub"); }
    public static int ime() { throw new RuntimeException("stub"); }
  }
}
