package dev.gemmaedge.demo;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Insets;
import android.net.Uri;
import android.os.Build;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.util.Log;
import android.view.WindowInsets;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ScrollView;
import android.widget.SeekBar;
import android.widget.TextView;
import dev.gemmaedge.chat.ChatSession;
import dev.gemmaedge.chat.ChatTemplate;
import dev.gemmaedge.chat.ExportManifest;
import dev.gemmaedge.chat.GenerationStats;
import dev.gemmaedge.chat.StopFilter;
import dev.gemmaedge.chat.TokenCounter;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.pytorch.executorch.extension.llm.LlmCallback;
import org.pytorch.executorch.extension.llm.LlmGenerationConfig;
import org.pytorch.executorch.extension.llm.LlmModule;
import org.pytorch.executorch.extension.llm.LlmModuleConfig;

/**
 * Chat with a gemma-edge {@code .pte} through ExecuTorch's LlmModule, keeping its KV cache between turns.
 * Prompt formatting, the cache bookkeeping (ChatSession), stop markers and statistics live in the
 * plain-Java core (dev.gemmaedge.chat); this class wires them to the screen and to the runtime. Every
 * LlmModule call but {@code stop()} runs on one worker thread, so {@code close()} never overlaps a
 * generation.
 */
public class MainActivity extends Activity {
  static final String TAG = "GemmaEdge";
  /** Where `adb push` puts the artifacts (android_demo/README.md). */
  static final File PUSHED = new File("/data/local/tmp/gemma");
  /** The context when no manifest.json came with the .pte: the exporter's default --max-seq-len. */
  static final int DEFAULT_CONTEXT_TOKENS = 2048;
  static final int REPLY_TOKENS = 512;
  private static final int PICK_MODEL = 1;
  private static final int PICK_TOKENIZER = 2;
  private static final int PICK_MANIFEST = 3;

  private final ExecutorService worker = Executors.newSingleThreadExecutor();
  private final Handler ui = new Handler(Looper.getMainLooper());
  private final StringBuilder transcript = new StringBuilder();
  // Worker thread only:
  private volatile LlmModule module; // read by the UI thread to stop a generation
  private ChatSession session;
  private File modelFile = new File(PUSHED, "model.pte");
  private File tokenizerFile = new File(PUSHED, "tokenizer.model");
  private File manifestFile = new File(PUSHED, "manifest.json");

  private TextView status;
  private TextView transcriptView;
  private TextView statsView;
  private TextView temperatureLabel;
  private SeekBar temperature;
  private ScrollView scroll;
  private EditText input;
  private Button send;
  private Button stop;

  @Override
  protected void onCreate(Bundle savedInstanceState) {
    super.onCreate(savedInstanceState);
    setContentView(R.layout.activity_main);
    status = findViewById(R.id.model_status);
    transcriptView = findViewById(R.id.transcript);
    statsView = findViewById(R.id.stats);
    temperatureLabel = findViewById(R.id.temperature_label);
    temperature = findViewById(R.id.temperature);
    scroll = findViewById(R.id.scroll);
    input = findViewById(R.id.input);
    send = findViewById(R.id.send);
    stop = findViewById(R.id.stop);
    if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.R) {
      // Android 15 draws apps edge to edge: keep the controls clear of the status and navigation bars.
      findViewById(R.id.root).setOnApplyWindowInsetsListener((view, insets) -> {
        Insets bars = insets.getInsets(WindowInsets.Type.systemBars() | WindowInsets.Type.ime());
        view.setPadding(bars.left, bars.top, bars.right, bars.bottom);
        return WindowInsets.CONSUMED;
      });
    }

    temperature.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
      @Override public void onProgressChanged(SeekBar bar, int progress, boolean fromUser) {
        showTemperature();
      }
      @Override public void onStartTrackingTouch(SeekBar bar) {}
      @Override public void onStopTrackingTouch(SeekBar bar) {}
    });
    temperature.setProgress(0);
    showTemperature();

    findViewById(R.id.load).setOnClickListener(v -> worker.execute(this::loadModel));
    findViewById(R.id.pick).setOnClickListener(v -> pick(PICK_MODEL));
    findViewById(R.id.clear).setOnClickListener(v -> {
      transcript.setLength(0);
      transcriptView.setText("");
      worker.execute(() -> {
        if (session != null) session.clear(); // the next message resets the context
      });
    });
    send.setOnClickListener(v -> onSend());
    stop.setOnClickListener(v -> {
      LlmModule m = module;
      if (m != null) m.stop(); // safe from any thread: it only raises the runner's stop flag
    });
    setGenerating(false);
    showStatus("Model: " + modelFile + "\nTokenizer: " + tokenizerFile + "\nManifest: " + manifestFile);
  }

  private float temperature() {
    return temperature.getProgress() / 100f;
  }

  private void showTemperature() {
    temperatureLabel.setText(String.format(Locale.ROOT, "Temperature %.2f (0 = greedy)", temperature()));
  }

  /** Creates and loads the module once; the temperature is passed with each message. Worker thread. */
  private boolean loadModel() {
    if (module != null) return true;
    showStatus("Loading " + modelFile.getName() + " …");
    int context = contextTokens();
    long start = System.currentTimeMillis();
    LlmModule m = null;
    try {
      // numBos 1: the runner puts Gemma's <bos> before the first prompt after each reset (not before
      // later turns); LlmGenerationConfig.numBos is ignored since ExecuTorch 1.3. dataPath: model.ptd
      // beside the .pte when the export keeps data outside it (a tied int4 table stored once), else null.
      File data = new File(modelFile.getParentFile(), "model.ptd");
      m = new LlmModule(LlmModuleConfig.create()
          .modulePath(modelFile.getAbsolutePath())
          .tokenizerPath(tokenizerFile.getAbsolutePath())
          .dataPath(data.isFile() ? data.getAbsolutePath() : null)
          .temperature(0f)
          .numBos(1)
          .numEos(0)
          .loadMode(LlmModuleConfig.LOAD_MODE_MMAP)
          .build());
      m.load();
    } catch (RuntimeException e) { // ExecutorchRuntimeException, IllegalArgumentException for a bad path
      closeQuietly(m);
      Log.e(TAG, "load failed", e);
      showStatus("Could not load " + modelFile + ": " + e.getMessage()
          + "\nPush model.pte (and model.ptd if the export wrote one), tokenizer.model and manifest.json to "
          + PUSHED + " or pick them.");
      return false;
    }
    module = m;
    session = new ChatSession(null, context, Math.min(REPLY_TOKENS, context / 2), TokenCounter.UTF8_BOUND);
    long ms = System.currentTimeMillis() - start;
    Log.i(TAG, "loaded " + modelFile + " in " + ms + " ms, context " + context + " tokens");
    showStatus(String.format(Locale.ROOT, "Loaded %s in %d ms (context %d tokens)", modelFile.getName(), ms, context));
    return true;
  }

  /** The export's context from manifest.json beside the .pte; the exporter's default without one. */
  private int contextTokens() {
    try {
      String json = new String(Files.readAllBytes(manifestFile.toPath()), StandardCharsets.UTF_8);
      return ExportManifest.parse(json).contextTokens;
    } catch (IOException | IllegalArgumentException e) {
      Log.w(TAG, "no usable " + manifestFile + " (" + e.getMessage() + "); assuming " + DEFAULT_CONTEXT_TOKENS);
      showStatus("No manifest.json beside the model: assuming a context of " + DEFAULT_CONTEXT_TOKENS
          + " tokens (gemma-edge export's default)");
      return DEFAULT_CONTEXT_TOKENS;
    }
  }

  private void onSend() {
    String text = input.getText().toString();
    if (text.trim().isEmpty()) return;
    input.setText("");
    appendTranscript("\n\nYou: " + text.trim() + "\n\nGemma: ");
    setGenerating(true);
    float t = temperature();
    worker.execute(() -> generate(text, t));
  }

  /** Worker thread: one user message through the model, streamed to the screen. */
  private void generate(String text, float temp) {
    if (!loadModel()) {
      ui.post(() -> setGenerating(false));
      return;
    }
    ChatSession.Turn turn;
    try {
      turn = session.next(text);
      if (turn.reset) module.resetContext();
    } catch (IllegalStateException e) { // too long for the context; or the module refused the reset
      session.failed();
      showStatus(e.getMessage());
      ui.post(() -> setGenerating(false));
      return;
    }
    if (turn.droppedTurns > 0) showStatus("Left out the " + turn.droppedTurns + " oldest turns to fit the context");
    StopFilter filter = StopFilter.gemma();
    long start = System.currentTimeMillis();
    long[] firstPiece = {0};
    String[] lastPiece = {null};
    int[] pieces = {0};
    String[] runnerStats = {null};
    String[] runnerError = {null};
    int budget = (turn.reset ? 0 : session.cachedTokens()) + turn.tokensBound + REPLY_TOKENS;
    LlmGenerationConfig config = LlmGenerationConfig.create()
        .echo(false)
        .seqLen(budget) // the runner caps it at the context and counts what the cache holds ...
        .maxNewTokens(session.replyTokens()) // ... unless the .pte's prefill is shorter than its context
        .temperature(temp)
        .build();
    try {
      module.generate(turn.text, config, new LlmCallback() {
        @Override public void onResult(String piece) {
          if (firstPiece[0] == 0) firstPiece[0] = System.currentTimeMillis();
          lastPiece[0] = piece;
          pieces[0]++;
          String shown = filter.accept(piece);
          if (filter.stopped() && !ChatTemplate.END_OF_TURN.equals(piece)) {
            module.stop(); // a marker spelled out in ordinary tokens: the runner would not stop at it
          }
          if (!shown.isEmpty()) ui.post(() -> appendTranscript(shown));
        }

        @Override public void onStats(String json) {
          runnerStats[0] = json;
        }

        @Override public void onError(int errorCode, String message) {
          runnerError[0] = message + " (error " + errorCode + ")";
        }
      });
    } catch (RuntimeException e) { // ExecutorchRuntimeException: prompt past the context, closed module, ...
      if (runnerError[0] == null) runnerError[0] = e.getMessage();
    }
    String tail = filter.finish();
    String reply = filter.text();
    GenerationStats stats = parseStats(runnerStats[0]);
    if (runnerError[0] != null && reply.isEmpty()) {
      session.failed();
      Log.e(TAG, "generate failed: " + runnerError[0]);
      showStatus("Generation failed: " + runnerError[0]);
    } else {
      // Exact continuations need the reply's last token: the marker token the runner stopped at, or the
      // last piece of a cut reply; a marker spelled out in text leaves neither, so that turn resets.
      boolean atMarkerToken = filter.stopped() && ChatTemplate.END_OF_TURN.equals(lastPiece[0]);
      session.finished(turn, reply, atMarkerToken, filter.stopped() ? null : lastPiece[0], pieces[0],
          stats == null ? -1 : stats.promptTokens, stats == null ? -1 : stats.generatedTokens);
    }
    String summary = stats != null ? stats.summary() : String.format(Locale.ROOT, "first token %d ms · %.1f s in all",
        firstPiece[0] == 0 ? 0 : firstPiece[0] - start, (System.currentTimeMillis() - start) / 1000.0);
    Log.i(TAG, (turn.reset ? "prefilled the conversation: " : "continued the cached conversation: ") + summary);
    ui.post(() -> {
      appendTranscript(tail);
      statsView.setText(summary);
      setGenerating(false);
    });
  }

  private static GenerationStats parseStats(String json) {
    if (json == null) return null;
    try {
      return GenerationStats.fromRunnerJson(json);
    } catch (IllegalArgumentException e) {
      Log.w(TAG, "unreadable runner stats: " + e.getMessage());
      return null;
    }
  }

  private void setGenerating(boolean busy) {
    send.setEnabled(!busy);
    stop.setEnabled(busy);
  }

  private void appendTranscript(String s) {
    transcript.append(s);
    transcriptView.setText(transcript);
    scroll.post(() -> scroll.fullScroll(ScrollView.FOCUS_DOWN));
  }

  private void showStatus(String s) {
    ui.post(() -> status.setText(s));
  }

  private void pick(int which) {
    Intent intent = new Intent(Intent.ACTION_OPEN_DOCUMENT).addCategory(Intent.CATEGORY_OPENABLE).setType("*/*");
    startActivityForResult(intent, which);
  }

  @Override
  protected void onActivityResult(int requestCode, int resultCode, Intent data) {
    super.onActivityResult(requestCode, resultCode, data);
    if (resultCode != RESULT_OK || data == null || data.getData() == null) return;
    Uri uri = data.getData();
    String name = requestCode == PICK_MODEL ? "model.pte" : requestCode == PICK_TOKENIZER ? "tokenizer.model"
        : "manifest.json";
    File target = new File(getFilesDir(), name);
    worker.execute(() -> {
      try {
        copyAtomically(uri, target);
      } catch (IOException e) {
        showStatus("Could not copy " + uri + ": " + e.getMessage());
        return;
      }
      if (requestCode == PICK_MODEL) {
        modelFile = target;
        ui.post(() -> pick(PICK_TOKENIZER));
      } else if (requestCode == PICK_TOKENIZER) {
        tokenizerFile = target;
        ui.post(() -> pick(PICK_MANIFEST));
      } else {
        manifestFile = target;
        closeQuietly(module); // load the picked files on the next message
        module = null;
        showStatus("Picked " + modelFile + ", " + tokenizerFile + " and " + manifestFile);
      }
    });
  }

  /** Copies to a temporary file first so a half-copied model is never loaded. */
  private void copyAtomically(Uri uri, File target) throws IOException {
    File tmp = new File(target.getPath() + ".part");
    try (InputStream in = getContentResolver().openInputStream(uri); OutputStream out = new FileOutputStream(tmp)) {
      if (in == null) throw new IOException("no data");
      byte[] buf = new byte[1 << 20];
      for (int n; (n = in.read(buf)) > 0; ) out.write(buf, 0, n);
    }
    if (!tmp.renameTo(target)) throw new IOException("rename to " + target + " failed");
  }

  private static void closeQuietly(LlmModule m) {
    if (m == null) return;
    try {
      m.close();
    } catch (IllegalStateException e) {
      Log.w(TAG, "close: " + e.getMessage());
    }
  }

  @Override
  protected void onDestroy() {
    LlmModule m = module;
    if (m != null) m.stop(); // end a running generation; close() then runs after it on the worker
    worker.execute(() -> {
      closeQuietly(module);
      module = null;
    });
    worker.shutdown();
    super.onDestroy();
  }
}
